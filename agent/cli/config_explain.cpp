// `cairn-agent config [--explain]`: the configuration the boot and the service would use,
// and with --explain where each value came from (config file or flag, kernel command line,
// fw-cfg, the cloud's user-data, default) and what the user-data lookup did. The bootstrap
// token is never shown, only its source.
#include "agent/boot/bootstrap.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"

namespace cairn::agent::cli {

void add_config(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("config", "show the agent's configuration (--explain: where each value came from)");
  auto explain = std::make_shared<bool>(false);
  cmd->add_flag("--explain", *explain, "name the source of each value");
  cmd->callback([&global, &exit_code, explain] {
    exit_code = run_command("config", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      out.stage = "bootstrap";
      auto bootstrap = boot::read_bootstrap(*config);
      if (!bootstrap) return out.error = bootstrap.error(), out;
      const auto used = boot::apply(*config, *bootstrap);
      struct Row {
        std::string key;
        std::string value;
        std::string source;
      };
      auto from = [](const std::optional<boot::Value>& v, bool secret) -> Row {
        if (!v) return {"", "(unset)", "-"};
        return {"", secret ? "(set, not shown)" : v->value, v->source};
      };
      std::vector<Row> rows;
      auto add = [&](std::string key, Row row) {
        row.key = std::move(key);
        rows.push_back(std::move(row));
      };
      add("control_url", from(used.control_url, false));
      add("ca_fingerprint", from(used.ca_fingerprint, false));
      if (used.token) {
        add("token", from(used.token, true));
      } else {
        add("token", {"", config->token_file.string(), "token file (read at enroll)"});
      }
      add("persist", from(used.persist, false));
      add("base", from(used.base, false));  // sealed base module (h-base)
      add("persist_disk", from(used.disk, false));  // h-userdata: persist disk rule
      add("persist_pcrs", from(used.pcrs, false));
      if (used.labels) {  // user-data (h-userdata)
        std::string text;
        for (const auto& [k, v] : used.labels->values) text += (text.empty() ? "" : ",") + k + "=" + v;
        add("labels", {"", text, used.labels->source});
      } else {
        add("labels", {"", "(none)", "-"});
      }
      add("persist_dir", {"", config->persist_dir.string(), "config file, flag or default"});
      add("module_registry",
          {"", config->module_registry.empty() ? "(unset)" : config->module_registry, "config file"});
      add("modules.auto_apply", {"", config->module_auto_apply ? "true" : "false", config->module_auto_apply_source});  // h-apply
      add("modules.policy_require_expiry",  // h-polexpiry
          {"", config->module_policy_require_expiry ? "true" : "false", "config file (default false)"});
      Json details = Json::object();
      std::string human;
      for (const auto& r : rows) {
        details[r.key] = *explain ? Json{{"value", r.value}, {"source", r.source}} : Json(r.value);
        human += r.key + std::string(r.key.size() < 16 ? 16 - r.key.size() : 1, ' ') + r.value;
        if (*explain) human += "    (" + r.source + ")";
        human += "\n";
      }
      if (*explain) {  // user-data (h-userdata): which clouds were asked and what they said
        details["user_data"] = used.notes;
        for (const auto& n : used.notes) human += n + "\n";
      }
      out.details = details;
      out.human = human;
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
