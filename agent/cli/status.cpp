// PLACEHOLDER until the enrollment work lands.
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"

namespace cairn::agent::cli {
void add_status(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("status", "(not yet built)");
  cmd->callback([&global, &exit_code] {
    exit_code = run_command("status", global.json, [] {
      return CommandOutcome{.stage = "status", .error = Error{Errc::internal, "not built yet", {}}};
    });
  });
}
}  // namespace cairn::agent::cli
