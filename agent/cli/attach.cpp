// `cairn-agent attach NAME[@VERSION]`: fetch the module from the configured registry, verify
// it against the trust policy, store it and remount the union with it (atomically: a failure
// leaves the union as it was).
#include "agent/cli/commands.hpp"
#include "agent/cli/modules_report.hpp"
#include "agent/cli/report.hpp"
#include "agent/modules/attachments.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {

void add_attach(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("attach", "fetch, verify and mount a module into the union");
  auto spec = std::make_shared<std::string>();
  auto required = std::make_shared<bool>(false);
  cmd->add_option("NAME[@VERSION]", *spec, "the module (VERSION is its tag; default latest)")->required();
  cmd->add_flag("--required", *required, "a later change that would leave this module out is refused instead");
  cmd->callback([&global, &exit_code, spec, required] {
    exit_code = run_command("attach", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      const auto now = format_rfc3339(SystemClock::instance().now());
      auto env = modules::modules_env(*config, now);
      if (!env) return out.error = env.error(), out;
      const auto at = spec->find('@');
      const std::string name = spec->substr(0, at);
      const std::string version = at == std::string::npos ? "latest" : spec->substr(at + 1);
      if (!env->registry) {
        out.error = Error{Errc::config, "no module registry configured", "set modules.registry in the agent's config"};
        return out;
      }
      out.stage = "attach.fetch";
      auto http = oci::make_registry_http(env->registry->options);
      oci::Registry registry(*http, env->registry->host, env->registry->options);
      auto module = modules::fetch_and_verify(*env, registry, name, version, now);
      if (!module) return out.error = module.error(), out;
      module->required = *required;
      out.stage = "attach.mount";
      auto mounter = modules::make_linux_mounter(config->root);
      auto change = modules::attach(*env, *mounter, std::move(*module));
      if (!change) return out.error = change.error(), out;
      out.details = change_details(*change);
      out.human = "attached " + name + "\n" + change_human(*change);
      return out;
    });
  });
}

void add_update(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("update", "reconcile the attached modules with the desired set from the control service");
  cmd->callback([&global, &exit_code] {
    exit_code = run_command("update", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      const auto now = format_rfc3339(SystemClock::instance().now());
      auto env = modules::modules_env(*config, now);
      if (!env) return out.error = env.error(), out;
      if (!env->registry) {
        out.error = Error{Errc::config, "no module registry configured", "set modules.registry in the agent's config"};
        return out;
      }
      out.stage = "update.desired";
      auto desired = modules::load_desired(*config);
      if (!desired) return out.error = desired.error(), out;
      if (!*desired) {
        out.error = Error{Errc::temporary, "no desired module set received yet",
                          "the service stores it from each heartbeat reply; start cairn-agent service and retry"};
        return out;
      }
      out.stage = "update";
      // The same construction as the service's reconciler (h-apply): one shared function.
      auto result = modules::update_from_config(*config, **desired, now);
      if (!result) return out.error = result.error(), out;
      out.details = change_details(result->change);
      Json failed = Json::array();
      for (const auto& f : result->failed) failed.push_back({{"name", f.name}, {"reason", f.reason}});
      out.details["failed"] = failed;
      out.human = change_human(result->change);
      for (const auto& f : result->failed) out.human += "  FAILED " + f.name + ": " + f.reason + "\n";
      if (result->first_error) out.error = *result->first_error;  // the others were applied
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
