// `cairn-agent enroll`: get a node certificate with a bootstrap token; nothing to do when
// the installed certificate is valid for this node.
#include <cctype>

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/enroll/node_identity.hpp"
#include "common/fs.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {
namespace {

// A token is ~70 characters; anything near this is not a token file.
constexpr std::size_t kMaxTokenFileBytes = 4096;

// The token in `path`, without the trailing newline an editor or `echo` leaves.
Result<std::string> read_token_file(const std::filesystem::path& path) {
  auto text = read_file(path, kMaxTokenFileBytes);
  if (!text) {
    return fail(Error{Errc::config, "token file: " + text.error().message,
                      "write the token of `cairn-control token create` to " + path.string() +
                          " (readable by root only)"});
  }
  while (!text->empty() && std::isspace(static_cast<unsigned char>(text->back())) != 0) text->pop_back();
  if (text->empty()) {
    return fail(Errc::config, "token file " + path.string() + " is empty",
                "write the token of `cairn-control token create` into it");
  }
  return std::move(*text);
}

}  // namespace

void add_enroll(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("enroll", "get a node certificate from the control service");
  auto options = std::make_shared<EnrollOptions>();
  auto token_file = std::make_shared<std::string>();
  auto* token_opt = cmd->add_option(
      "--token", options->token,
      "bootstrap token; visible to every local user in /proc/PID/cmdline and ps, so prefer --token-file");
  cmd->add_option("--token-file", *token_file,
                  "read the bootstrap token from FILE (default: token_file of agent.json, else "
                  "<persist>/cairn/bootstrap-token)")
      ->excludes(token_opt);
  cmd->add_flag("--force", options->force, "enroll again even if the installed certificate is valid");
  cmd->callback([&global, &exit_code, options, token_file] {
    exit_code = run_command("enroll", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      if (!token_file->empty()) {
        // Read up front, even when the node turns out to be enrolled already: a token file
        // named on the command line that is missing or empty is a mistake to report now.
        auto token = read_token_file(*token_file);
        if (!token) return out.error = token.error(), out;
        options->token = std::move(*token);
      }
      out.stage = "identity";
      auto identity = discover_node_identity(*config);
      if (!identity) return out.error = identity.error(), out;
      out.stage = "enroll";
      auto result = enroll(*config, *identity, *options, SystemClock::instance());
      if (!result) return out.error = result.error(), out;
      out.details = {{"node_id", result->node_id}, {"already_enrolled", result->already_enrolled},
                     {"serial", result->cert.serial_hex}, {"not_after", format_rfc3339(result->cert.not_after)},
                     {"control_url", result->control_url}};
      out.human = (result->already_enrolled ? "already enrolled: node " : "enrolled: node ") + result->node_id +
                  "\n  certificate " + result->cert.serial_hex + "\n  valid until " +
                  format_rfc3339(result->cert.not_after) + "\n";
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
