// `cairn-agent boot`: the stage runner the initramfs' /init runs (DESIGN.md, "Boot"):
//   identity -> persist -> enroll -> modules -> handoff
// or, for an escrow node (key_source escrow, /persist not mounted yet), whose certificate is
// needed to fetch the volume key and would live on the locked volume (issue 15):
//   identity -> enroll (into tmpfs) -> persist (the credentials then move in) -> modules -> handoff
// Bootstrap values (control URL, CA fingerprint, token, persist mode) come from the kernel
// command line and fw-cfg (agent/boot/bootstrap.hpp) where the config file and flags leave
// them unset. Each stage logs `event=boot.stage stage=X ok=true duration_ms=N uptime_ms=N`
// on the console; a temporary failure is retried with backoff and says what it waits for, a
// configuration error stops at once with its hint. Handoff: with a sealed base
// (cairn.base=NAME@sha256:..., agent/boot/sealed_base.hpp) the modules stage mounts base +
// desired set at /sysroot and the agent exits 0 for /init to switch_root into it, where
// systemd starts `cairn-agent service` (units/cairn-agent.service); without one the service
// loop runs in this process, in the initramfs.
#include <map>
#include <random>

#include "agent/boot/bootstrap.hpp"
#include "agent/boot/sealed_base.hpp"
#include "agent/boot/stages.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/enroll/node_identity.hpp"
#include "agent/modules/attachments.hpp"
#include "agent/persist/host.hpp"
#include "agent/persist/runtime.hpp"
#include "agent/persist/staging.hpp"
#include "agent/runtime/service.hpp"
#include "agent/runtime/stop_signal.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {
namespace {

struct BootOptions {
  std::string handoff;  // service | none | switch-root; empty: switch-root with a sealed base, else service
  int enroll_attempts = 0;          // 0: until it succeeds
  std::int64_t retry_max_ms = 30000;
};

// Milliseconds since the kernel started (/proc/uptime), or -1 when unreadable.
std::int64_t uptime_ms(const Root& root) {
  auto text = read_file(root / "proc/uptime", 128);
  if (!text) return -1;
  try {
    return static_cast<std::int64_t>(std::stod(*text) * 1000.0);
  } catch (const std::exception&) {
    return -1;
  }
}

Json bootstrap_json(const boot::Bootstrap& b) {
  auto entry = [](const std::optional<boot::Value>& v, bool secret) -> Json {
    if (!v) return nullptr;
    return {{"value", secret ? std::string("(set, not shown)") : v->value}, {"source", v->source}};
  };
  return {{"control_url", entry(b.control_url, false)},
          {"ca_fingerprint", entry(b.ca_fingerprint, false)},
          {"token", entry(b.token, true)},
          {"persist", entry(b.persist, false)},
          {"base", entry(b.base, false)}};
}

Result<boot::StageOutcome> persist_stage(const AgentConfig& config, const std::string& mode) {
  if (mode == "tmpfs") {
    // Diskless: /init mounted a tmpfs on the persist dir; nothing survives a reboot.
    if (auto ok = make_dirs(config.state_dir(), 0700); !ok) return fail(ok.error());
    return boot::StageOutcome{.note = "diskless: " + config.persist_dir.string() +
                                      " is a tmpfs, nothing survives a reboot"};
  }
  auto rt = persist::open_runtime(config, true, "");
  if (!rt) return fail(rt.error());
  auto& r = **rt;
  auto result = persist::open_volume(r.config, r.deps);
  if (!result) return fail(result.error());
  // An unlock failure's event (run/cairn/persist-event.json) stays for the service to send.
  return boot::StageOutcome{.note = std::string(persist::action_name(result->action)) + " " +
                                    result->target.partition_host_path.string() + " on " +
                                    r.config.mount_point.string() +
                                    (result->key_binding.empty() ? "" : " (key: " + result->key_binding + ")")};
}

// Escrow order (issue 15): the key is fetched with the credentials enrolled into tmpfs, then
// they move onto the opened volume.
Result<boot::StageOutcome> escrow_persist_stage(const AgentConfig& config) {
  auto rt = persist::open_runtime(config, true, persist::staged_config(config).state_dir());
  if (!rt) return fail(rt.error());
  auto& r = **rt;
  auto result = persist::open_escrow_volume(config, r.config, r.deps);
  if (!result) return fail(result.error());
  return boot::StageOutcome{
      .note = std::string(persist::action_name(result->volume.action)) + " " +
              result->volume.target.partition_host_path.string() + " on " + r.config.mount_point.string() +
              " with the escrow key" +
              (result->credentials.moved ? "; credentials (serial " + result->credentials.serial + ") moved onto it"
                                         : std::string{})};
}

Result<boot::StageOutcome> modules_stage(const AgentConfig& config, const Clock& clock) {
  if (config.module_registry.empty() && config.module_trust.is_null()) {
    return boot::StageOutcome{.skipped = true,
                              .note = "no module registry or trust policy configured (agent.json \"modules\")"};
  }
  auto env = modules::modules_env(config, format_rfc3339(clock.now()));
  if (!env) return fail(env.error());
  auto attached = env->store.load_attached();
  if (!attached) return fail(attached.error());
  if (attached->empty()) {
    return boot::StageOutcome{.skipped = true,
                              .note = "no module attached yet; assignments arrive over the service loop"};
  }
  auto mounter = modules::make_linux_mounter(config.root);
  auto change = modules::apply_set(*env, *mounter, std::move(*attached));
  if (!change) return fail(change.error());
  return boot::StageOutcome{.note = std::to_string(change->attached.size()) + " module(s) re-verified and mounted"};
}

// The stages and the handoff (the command's body): what failed is in the outcome's stage and error.
CommandOutcome run_boot(const GlobalOptions& global, const BootOptions& opts) {
  CommandOutcome out{.stage = "config"};
  StopSignal stop;
  const Clock& clock = SystemClock::instance();
  boot::StageRunner runner(clock, [&](Clock::MonoTime deadline) { return stop.wait_until(clock, deadline); });
  const std::chrono::milliseconds retry_max{opts.retry_max_ms};

  auto config = load_agent_config(global);
  if (!config) return out.error = config.error(), out;
  // With the cloud's user-data, its metadata server given time to come up (h-userdata).
  auto bootstrap = boot::read_bootstrap(*config, 8, clock);
  if (!bootstrap) return out.error = bootstrap.error(), out;
  auto used = boot::apply(*config, *bootstrap);
  out.details["bootstrap"] = bootstrap_json(used);
  std::optional<boot::BaseRef> base;
  if (used.base) {
    auto ref = boot::parse_base_ref(used.base->value, used.base->source);
    if (!ref) return out.error = ref.error(), out;
    base = *ref;
  }
  const std::string handoff = !opts.handoff.empty() ? opts.handoff : base ? "switch-root" : "service";
  if (handoff == "switch-root" && !base) {
    out.error = Error{Errc::usage, "--handoff switch-root without a sealed base",
                      "name the base on the kernel command line (cairn.base=NAME@sha256:...) or in fw-cfg "
                      "opt/org.cairn/config \"base\"; nothing else may become /"};
    return out;
  }
  log::info("boot.start", {{"uptime_ms", uptime_ms(config->root)},
                           {"control", config->control_url.empty() ? std::string("(none)") : config->control_url},
                           {"control_from", used.control_url ? used.control_url->source : std::string("-")},
                           {"persist", used.persist->value},
                           {"base", base ? base->str() : std::string("(none)")},
                           {"token_from", used.token ? used.token->source : std::string("token file")}});

  auto stage = [&](const std::string& name, const boot::RetryPolicy& policy,
                   const std::function<Result<boot::StageOutcome>()>& body) {
    out.stage = name;
    return runner.run(name, policy, body);
  };

  // identity: fw-cfg and the cloud metadata servers can take a moment after the drivers load.
  std::optional<protocol::NodeIdentity> identity;
  if (auto ok = stage("identity", {.max_attempts = 10, .first_delay = std::chrono::milliseconds(200),
                                    .max_delay = std::chrono::milliseconds(2000)},
                      [&]() -> Result<boot::StageOutcome> {
                        auto id = discover_node_identity(*config);
                        if (!id) return fail(id.error());
                        identity = *id;
                        return boot::StageOutcome{.note = "node " + id->node_id + " from " + id->source};
                      });
      !ok) {
    return out.error = ok.error(), out;
  }
  const bool mounted = persist::is_mount_point(config->root, config->persist_dir).value_or(false);
  const auto order = boot::boot_order(used.persist->value, config->persist.key_source, mounted);
  // escrow: enrollment writes into tmpfs (persist/staging.hpp); the persist stage moves it in.
  const AgentConfig enroll_config = order == boot::BootOrder::escrow ? persist::staged_config(*config) : *config;
  std::string node_id;
  const std::map<std::string, std::function<Status()>> run_stage{
      // persist: one attempt; a volume that does not unlock is never retried into a wipe (an
      // unlock failure is a refusal, never retried). escrow: control may be late, as for enroll.
      {"persist",
       [&] {
         const boot::RetryPolicy policy =
             order == boot::BootOrder::escrow
                 ? boot::RetryPolicy{.max_attempts = opts.enroll_attempts,
                                     .first_delay = std::chrono::milliseconds(500), .max_delay = retry_max}
                 : boot::RetryPolicy{.max_attempts = 1};
         return stage("persist", policy, [&] {
           return order == boot::BootOrder::escrow ? escrow_persist_stage(*config)
                                                   : persist_stage(*config, used.persist->value);
         });
       }},
      // enroll: the control service may be down or the network late; say so and retry.
      {"enroll",
       [&] {
         return stage("enroll",
                      {.max_attempts = opts.enroll_attempts, .first_delay = std::chrono::milliseconds(500),
                       .max_delay = retry_max},
                      [&]() -> Result<boot::StageOutcome> {
                        if (order == boot::BootOrder::escrow) {
                          if (auto ok = persist::prepare_staging(*config); !ok) return fail(ok.error());
                        }
                        EnrollOptions eo;
                        if (bootstrap->token && used.token) eo.token = used.token->value;
                        auto r = enroll(enroll_config, *identity, eo, clock);
                        if (!r) {
                          if (order == boot::BootOrder::escrow) {
                            return fail(persist::escrow_enroll_error(r.error(), identity->node_id));
                          }
                          return fail(r.error());
                        }
                        node_id = r->node_id;
                        // The token did its work: no copy stays in memory (h-userdata).
                        boot::forget_token(*bootstrap);
                        boot::forget_token(used);
                        return boot::StageOutcome{
                            .note = (r->already_enrolled ? "already enrolled: node " : "enrolled: node ") +
                                    r->node_id +
                                    (order == boot::BootOrder::escrow ? " (credentials in tmpfs until /persist is open)"
                                                                      : "")};
                      });
       }},
      {"modules",
       [&] {
         return stage("modules", {.max_attempts = 3, .first_delay = std::chrono::milliseconds(1000),
                                  .max_delay = retry_max},
                      [&] { return base ? boot::sealed_modules_stage(*config, *base, clock) : modules_stage(*config, clock); });
       }},
  };
  for (const auto& name : boot::stage_order(order)) {
    if (name == "identity") continue;  // ran above: every other stage needs it
    if (auto ok = run_stage.at(name)(); !ok) return out.error = ok.error(), out;
  }

  Json stages = Json::array();
  for (const auto& r : runner.records()) {
    stages.push_back({{"stage", r.name}, {"ok", r.ok}, {"skipped", r.skipped}, {"attempts", r.attempts},
                      {"duration_ms", r.duration_ms}, {"note", r.note}});
  }
  out.details["stages"] = stages;
  out.details["node_id"] = node_id;
  out.stage = "handoff";
  if (handoff == "switch-root") {
    // /init moves /run, /persist, /dev, /proc, /sys into the union and switch_roots;
    // systemd then starts cairn-agent.service with the same persist root and credentials.
    if (auto ok = boot::write_handoff(*config); !ok) return out.error = ok.error(), out;
    log::info("boot.handoff", {{"to", handoff}, {"sysroot", (config->root / boot::kSysroot).string()},
                               {"base", base->str()}, {"node", node_id}, {"uptime_ms", uptime_ms(config->root)}});
    out.details["sysroot"] = (config->root / boot::kSysroot).string();
    out.human = "booted: node " + node_id + "; switch_root into " + (config->root / boot::kSysroot).string() +
                " (base " + base->str() + ")\n";
    return out;
  }
  log::info("boot.handoff", {{"to", handoff}, {"node", node_id}, {"uptime_ms", uptime_ms(config->root)}});
  if (handoff == "none") {
    out.human = "booted: node " + node_id + " (no handoff)\n";
    return out;
  }
  std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const std::function<double()> random01 = [&] { return uniform(rng); };
  ServiceOptions service;
  auto ran = run_service(*config, service, clock, random01, stop);
  if (!ran) {
    log::error("service.failed", {{"error", ran.error().message}});
    return out.error = ran.error(), out;
  }
  out.human = "service loop ended (stop signal)\n";
  return out;
}

}  // namespace

void add_boot(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "boot", "the boot stages run by the initramfs: identity, persist, enroll, modules, then the service loop");
  auto opts = std::make_shared<BootOptions>();
  cmd->add_option("--handoff", opts->handoff,
                  "after the stages: switch-root (exit 0 for /init to switch_root into the union at /sysroot; "
                  "the default with a sealed base, cairn.base=), service (run the service loop here; the default "
                  "without one) or none (exit)")
      ->check(CLI::IsMember({"service", "none", "switch-root"}));
  cmd->add_option("--enroll-attempts", opts->enroll_attempts,
                  "give up enrolling after this many attempts (default 0: retry until it succeeds)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--retry-max-ms", opts->retry_max_ms, "longest wait between two attempts of a stage")
      ->check(CLI::Range(std::int64_t{10}, std::int64_t{600000}));
  cmd->callback([&global, &exit_code, opts] {
    exit_code = run_command("boot", global.json, [&]() -> CommandOutcome {
      auto out = run_boot(global, *opts);
      // For /init's console line and its retry (initramfs/init): which stage failed.
      if (out.error) {
        const Root root(global.root.empty() ? "/" : global.root);
        if (auto ok = write_file_atomic(root / boot::kBootFailedFile,
                                        out.stage + " " + std::string(errc_name(out.error->code)) + "\n", 0644);
            !ok) {
          log::warn("boot.failure_not_recorded", {{"error", ok.error().message}});
        }
      }
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
