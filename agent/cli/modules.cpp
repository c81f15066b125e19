// `cairn-agent modules [--json]` (read-only: the attached modules, their digests, verity state
// and the union's mount points) and `cairn-agent detach NAME`.
#include "agent/cli/commands.hpp"
#include "agent/cli/modules_report.hpp"
#include "agent/cli/report.hpp"
#include "common/clock.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {

Json attached_json(const modules::AttachedModule& m, bool mounted) {
  auto j = modules::to_json(m);
  j["mounted"] = mounted;
  return j;
}

Json change_details(const modules::ChangeOutcome& change) {
  Json attached = Json::array();
  for (const auto& a : change.attached) attached.push_back(attached_json(a, true));
  Json excluded = Json::array();
  for (const auto& e : change.union_outcome.excluded) excluded.push_back({{"name", e.name}, {"reason", e.reason}});
  return {{"attached", attached}, {"excluded", excluded}, {"union", modules::to_json(change.union_outcome.state)},
          {"gc_removed", change.gc_removed}};
}

std::string change_human(const modules::ChangeOutcome& change) {
  std::string s;
  const auto& st = change.union_outcome.state;
  if (st.layers.empty()) {
    s += "union: not mounted (no module attached)\n";
  } else {
    s += "union: " + st.mount_point.string() + " (generation " + std::to_string(st.generation) + ", upper " +
         std::string(modules::upper_mode_name(st.upper_mode)) + ")\n";
  }
  for (const auto& a : change.attached) s += "  " + a.name + " " + a.version + "  " + a.image_digest + "  verity " + a.verity + "\n";
  for (const auto& e : change.union_outcome.excluded) s += "  LEFT OUT " + e.name + ": " + e.reason + "\n";
  return s;
}

void add_modules(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("modules", "show the attached modules, their digests, verity state and mount points");
  cmd->callback([&global, &exit_code] {
    exit_code = run_command("modules", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      out.stage = "modules";
      modules::ModuleStore store(config->state_dir() / "modules");
      auto attached = store.load_attached();
      if (!attached) return out.error = attached.error(), out;
      auto mounter = modules::make_linux_mounter(config->root);
      modules::UnionPaths paths{.mount_point = config->module_union, .run_dir = config->module_run_dir,
                                .persist_upper = {}, .upper_mode = modules::UpperMode::tmpfs};
      modules::UnionManager manager(*mounter, paths);
      auto state = manager.load_state();
      if (!state) return out.error = state.error(), out;
      auto union_mounted = mounter->is_mount_point(state->live_path());  // h-modctl: gen-N without MOVE_MOUNT_BENEATH
      const bool live = union_mounted && *union_mounted && !state->layers.empty();
      Json list = Json::array();
      std::string human = live ? "union: " + state->mount_point.string() + " (generation " + std::to_string(state->generation) +
                                     ", upper " + std::string(modules::upper_mode_name(state->upper_mode)) + ")\n"
                               : "union: not mounted\n";
      for (const auto& a : *attached) {
        std::string dir;
        for (const auto& l : state->layers) {
          if (l.name == a.name && l.image_digest == a.image_digest) dir = l.dir.string();
        }
        const bool mounted = live && !dir.empty();
        auto j = attached_json(a, mounted);
        j["layer_dir"] = dir;
        list.push_back(j);
        human += "  " + a.name + " " + a.version + (mounted ? "  mounted" : "  NOT MOUNTED") + "\n    image " + a.image_digest +
                 "\n    fs-verity " + a.fsverity_digest + " (kernel: " + a.verity + ")\n    signed by " + a.key_id +
                 "\n    from " + a.source + "\n";
      }
      if (attached->empty()) human += "  no module attached\n";
      // modules (h-modctl): say once, plainly, when the kernel does not check reads.
      for (const auto& a : *attached) {
        if (!a.verity.starts_with("unavailable")) continue;
        human += "fs-verity " + a.verity + ": images are verified when attached, later reads are not checked by the kernel\n";
        break;
      }
      out.details = {{"attached", list}, {"union", live ? modules::to_json(*state) : Json(nullptr)}};
      out.human = human;
      return out;
    });
  });

  auto* detach = app.add_subcommand("detach", "remove a module from the union (atomically) and the attached set");
  auto name = std::make_shared<std::string>();
  detach->add_option("NAME", *name, "the module")->required();
  detach->callback([&global, &exit_code, name] {
    exit_code = run_command("detach", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      auto env = modules::modules_env(*config, format_rfc3339(SystemClock::instance().now()));
      if (!env) return out.error = env.error(), out;
      out.stage = "detach";
      auto mounter = modules::make_linux_mounter(config->root);
      auto change = modules::detach(*env, *mounter, *name);
      if (!change) return out.error = change.error(), out;
      out.details = change_details(*change);
      out.human = "detached " + *name + "\n" + change_human(*change);
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
