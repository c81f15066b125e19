// `cairn-agent enroll`: get a node certificate with a bootstrap token; nothing to do when
// the installed certificate is valid for this node.
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/enroll/node_identity.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {

void add_enroll(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("enroll", "get a node certificate from the control service");
  auto options = std::make_shared<EnrollOptions>();
  cmd->add_option("--token", options->token, "bootstrap token (default: read from the token file)");
  cmd->add_flag("--force", options->force, "enroll again even if the installed certificate is valid");
  cmd->callback([&global, &exit_code, options] {
    exit_code = run_command("enroll", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      out.stage = "identity";
      auto identity = discover_node_identity(*config);
      if (!identity) return out.error = identity.error(), out;
      out.stage = "enroll";
      auto result = enroll(*config, *identity, *options, SystemClock::instance());
      if (!result) return out.error = result.error(), out;
      out.details = {{"node_id", result->node_id}, {"already_enrolled", result->already_enrolled},
                     {"serial", result->cert.serial_hex}, {"not_after", format_rfc3339(result->cert.not_after)},
                     {"control_url", config->control_url}};
      out.human = (result->already_enrolled ? "already enrolled: node " : "enrolled: node ") + result->node_id +
                  "\n  certificate " + result->cert.serial_hex + "\n  valid until " +
                  format_rfc3339(result->cert.not_after) + "\n";
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
