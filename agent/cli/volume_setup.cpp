// `cairn-agent volume-setup [--wipe --yes-destroy-data]`: the persist stage of the boot, by
// hand. First boot: partition, seal, format, mkfs, mount. Later boots: unseal, activate, fsck,
// mount. A volume that does not unlock is never reformatted: exit 77 with a critical event,
// until an operator runs `persist reseal` or this command with --wipe --yes-destroy-data.
// Run again with the volume open but not mounted, it continues (fsck, mount); mounted, it
// reports so.
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/persist/runtime.hpp"
#include "agent/persist/staging.hpp"

namespace cairn::agent::cli {
namespace {

struct VolumeSetupOptions {
  bool wipe = false;
  bool yes_destroy_data = false;
  std::string credentials_dir;
};

}  // namespace

void add_volume_setup(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto opts = std::make_shared<VolumeSetupOptions>();
  auto* cmd = app.add_subcommand("volume-setup", "open (or create on first boot) the encrypted /persist volume");
  cmd->add_flag("--wipe", opts->wipe, "format the cairn-persist partition anew: every file on it is lost");
  cmd->add_flag("--yes-destroy-data", opts->yes_destroy_data, "confirms --wipe");
  cmd->add_option("--credentials", opts->credentials_dir,
                  "escrow: directory holding the node's certificate (default: the tmpfs credentials of an escrow boot, else the agent's state dir)");
  cmd->callback([&global, &exit_code, opts] {
    exit_code = run_command("volume-setup", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      if (opts->wipe != opts->yes_destroy_data) {
        out.error = Error{Errc::usage,
                          opts->wipe ? "--wipe destroys every file on /persist and needs --yes-destroy-data"
                                     : "--yes-destroy-data confirms --wipe, which was not given",
                          "to discard the volume's data: cairn-agent volume-setup --wipe --yes-destroy-data"};
        return out;
      }
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      out.stage = "persist.open";
      // escrow: credentials a boot enrolled into tmpfs (persist/staging.hpp) are used, then
      // moved onto the volume, as the boot's persist stage does.
      std::string credentials_dir = opts->credentials_dir;
      const auto staged = persist::staged_config(*config).state_dir();
      const bool use_staged = credentials_dir.empty() && config->persist.key_source == "escrow" &&
                              std::filesystem::exists(staged / "certs/current");
      if (use_staged) credentials_dir = staged.string();
      auto rt = persist::open_runtime(*config, true, credentials_dir);
      if (!rt) return out.error = rt.error(), out;
      auto& r = **rt;
      auto result = opts->wipe ? persist::wipe_and_create(r.config, r.deps) : persist::open_volume(r.config, r.deps);
      if (result && use_staged) {
        auto moved = persist::move_staged_credentials(*config);
        if (!moved) return out.error = moved.error(), out;
        if (moved->moved) result->steps.push_back("moved the enrollment credentials (serial " + moved->serial + ") onto the volume");
      }
      out.stage = "persist";
      out.details["key_source"] = std::string(persist::key_source_name(r.config.key_source));
      out.details["mount_point"] = r.config.mount_point.string();
      if (!result) return out.error = result.error(), out;
      // An unlock failure's event (run/cairn/persist-event.json) stays: the service sends it.
      out.details["action"] = std::string(persist::action_name(result->action));
      out.details["disk"] = result->target.disk.host_path.string();
      out.details["partition"] = result->target.partition_host_path.string();
      out.details["mapper"] = "/dev/mapper/" + r.config.mapper_name;
      out.details["keyslot"] = result->keyslot;
      out.details["steps"] = result->steps;
      std::string human;
      for (const auto& s : result->steps) human += "  " + s + "\n";
      human += "persist: " + std::string(persist::action_name(result->action)) + ", " + r.config.mount_point.string() + "\n";
      out.human = human;
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
