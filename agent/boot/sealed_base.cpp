#include "agent/boot/sealed_base.hpp"

#include <algorithm>

#include "agent/enroll/credentials.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/runtime/system_stats.hpp"
#include "agent/transport/control_client.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent::boot {
namespace {

// One heartbeat, as a turn of the service loop sends it, for the reply's desired set; the set
// is stored as the service stores it (`cairn-agent update` reads it too). The module trust
// policy control hands out with it is taken here as the service takes it (verified against
// the pinned policy keys, never below the last accepted version), so a base whose key only
// the distributed policy names verifies on a first or diskless boot too.
Result<std::vector<protocol::ModuleRef>> ask_desired_set(const AgentConfig& config, const Clock& clock) {
  CredentialStore store(config.state_dir());
  auto creds = store.load();
  if (!creds) return fail(creds.error());
  if (!*creds) return fail(Errc::config, "not enrolled: no credentials under " + store.current().dir.string(), "");
  auto url = enrolled_control_url(config);
  if (!url) return fail(url.error());
  auto tls = control_tls(config, *creds);
  if (!tls) return fail(tls.error());
  ControlClient client(*url, *tls);
  protocol::HeartbeatRequest hb;
  collect_system_stats(config.root, config.persist_dir, hb);
  hb.agent_version = CAIRN_VERSION;
  hb.mount_state = "none";
  hb.cert_not_after = format_rfc3339((*creds)->cert.not_after);
  hb.labels = config.labels;
  auto answer = client.heartbeat(hb);
  if (!answer) return fail(answer.error().with_context("heartbeat for the desired module set"));
  if (auto ok = modules::save_desired(config, answer->desired_modules); !ok) {
    log::warn("boot.desired_not_saved", {{"error", ok.error().message}});
  }
  if (auto policy = modules::receive_policy(config, answer->module_policy, format_rfc3339(clock.now())); !policy) {
    log::warn("boot.module_policy_not_taken", {{"error", policy.error().message}});
  }
  return answer->desired_modules;
}

std::string modules_list(const std::vector<protocol::ModuleRef>& set) {
  std::string out;
  for (const auto& m : set) out += (out.empty() ? "" : ",") + m.name;
  return out;
}

}  // namespace

std::vector<protocol::ModuleRef> sealed_set(const BaseRef& base, const std::vector<protocol::ModuleRef>& desired,
                                            std::vector<std::string>& dropped) {
  std::vector<protocol::ModuleRef> out;
  protocol::ModuleRef ref;
  ref.name = base.name;
  ref.digest = base.digest;
  // Required: when the pinned base does not fetch or verify, update() refuses the whole change
  // before anything is mounted, instead of keeping an attached base of another digest (an
  // earlier boot's, on a disk node) in the union that check_sealed_base would refuse only once
  // it was mounted at /sysroot.
  ref.required = true;
  out.push_back(std::move(ref));
  for (const auto& d : desired) {
    if (d.name == base.name) {
      dropped.push_back(d.name + "@" + d.digest);
      continue;
    }
    out.push_back(d);
  }
  return out;
}

Status check_sealed_base(const BaseRef& base, const std::vector<modules::AttachedModule>& attached,
                         const std::vector<modules::Exclusion>& failed) {
  const std::string hint =
      "the boot makes only the pinned base `/`: push that exact module to the registry, or boot with the "
      "cairn.base= digest of the base you published";
  for (const auto& f : failed) {
    if (f.name == base.name) {
      return fail(Errc::refused, "sealed base " + base.str() + " refused: " + f.reason, hint);
    }
  }
  const auto it = std::find_if(attached.begin(), attached.end(),
                               [&](const modules::AttachedModule& a) { return a.name == base.name; });
  if (it == attached.end()) {
    return fail(Errc::refused, "sealed base " + base.str() + " is not in the union", hint);
  }
  if (!it->source.ends_with("@" + base.digest)) {
    return fail(Errc::refused, "sealed base " + base.str() + ": the union holds " + it->name + " from " + it->source, hint);
  }
  return {};
}

protocol::Event base_override_event(const BaseRef& base, const protocol::ModuleRef& desired, const std::string& now_rfc3339) {
  std::string digest_word = desired.digest;  // event ids stay one word: "sha256-<hex>"
  std::replace(digest_word.begin(), digest_word.end(), ':', '-');
  return {"module.base_override_refused." + digest_word, "warning", "module.base_override_refused",
          "control's desired set names module " + desired.name + "@" + desired.digest + "; the sealed base " + base.str() +
              " (pinned in the boot artifact) stays /: sealed=" + base.str() + " desired=" + desired.name + "@" +
              desired.digest + "; pin the new base in the boot artifact (cairn.base=) to change it",
          now_rfc3339};
}

Result<modules::UpdateOutcome> attach_sealed(modules::ModulesEnv& env, modules::Mounter& mounter,
                                             const modules::FetchFn& fetch, const BaseRef& base,
                                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339) {
  std::vector<std::string> dropped;
  const auto set = sealed_set(base, desired, dropped);
  for (const auto& d : desired) {
    if (d.name != base.name || d.digest == base.digest) continue;
    log::warn("boot.base_override_refused", {{"sealed", base.str()}, {"desired", d.name + "@" + d.digest},
                                             {"note", "control's desired set names the base module; the sealed digest wins"}});
    // For control, delivered by the service (after switch_root, systemd's) with the module events.
    if (auto ok = modules::record_event(env.store, base_override_event(base, d, now_rfc3339)); !ok) {
      log::warn("modules.event_not_recorded", {{"kind", "module.base_override_refused"}, {"error", ok.error().message}});
    }
  }
  // The order that keeps another base from ever being mounted: update() fetches the base by
  // its pinned digest (the registry's manifest must hash to it) and verifies it (signature,
  // image digest) before it mounts anything; the base is required in the set, so a base that
  // fails there fails the change with nothing mounted; and the attached base it reuses without
  // fetching is only one whose source is that same digest. check_sealed_base after the mount
  // only catches the pinned base being left out of the union.
  auto updated = modules::update(env, mounter, fetch, set, now_rfc3339);
  if (!updated) return fail(updated.error().with_context("sealed base " + base.str()));
  if (auto ok = check_sealed_base(base, updated->change.attached, updated->failed); !ok) return fail(ok.error());
  return updated;
}

Result<StageOutcome> sealed_modules_stage(const AgentConfig& config, const BaseRef& base, const Clock& clock) {
  // The heartbeat first: it may bring a newer trust policy, which the environment below reads.
  std::vector<protocol::ModuleRef> desired;
  auto asked = ask_desired_set(config, clock);
  auto env = modules::modules_env(config, format_rfc3339(clock.now()));
  if (!env) return fail(env.error());
  if (!env->registry) {
    return fail(Errc::config, "cairn.base=" + base.str() + " is set but no module registry is configured",
                "set \"registry\" in the \"modules\" section of /etc/cairn/agent.json");
  }
  env->paths.mount_point = config.root / kSysroot;
  env->paths.direct = true;
  // The upper of a sealed root is always a tmpfs: a persistent upper would lay what was written
  // to / before the reboot (a compromised binary, a changed /sbin/init) over the pinned base.
  if (env->paths.upper_mode != modules::UpperMode::tmpfs) {
    log::warn("boot.upper_forced_tmpfs", {{"base", base.str()},
                                          {"note", "modules.upper \"persist\" is ignored under a sealed base: / starts from the "
                                                   "pinned base at every boot; keep state under /persist"}});
    env->paths.upper_mode = modules::UpperMode::tmpfs;
  }
  auto mounter = modules::make_linux_mounter(config.root);
  modules::UnionManager manager(*mounter, env->paths);
  // A previous attempt of this stage may have left its union: start from nothing.
  if (auto ok = manager.teardown(); !ok) return fail(ok.error().with_context("unmount the previous attempt's union"));
  if (auto ok = make_dirs(env->paths.mount_point, 0755); !ok) return fail(ok.error());

  if (asked) {
    desired = std::move(*asked);
  } else {
    auto stored = modules::load_desired(config);
    if (stored && *stored) desired = std::move(**stored);
    log::warn("boot.desired_unavailable", {{"error", asked.error().message},
                                           {"using", stored && *stored ? "the last stored desired set" : "the base alone"}});
  }
  auto http = oci::make_registry_http(env->registry->options);
  oci::Registry registry(*http, env->registry->host, env->registry->options);
  const auto now = format_rfc3339(clock.now());
  auto updated = attach_sealed(*env, *mounter, modules::registry_fetch(*env, registry, now), base, desired, now);
  if (!updated) {
    // A refusal after the mount (the union left the base out): nothing stays at /sysroot. A
    // registry that did not answer keeps its retryable code, so the stage runner tries again.
    if (auto ok = manager.teardown(); !ok) {
      log::error("boot.sysroot_teardown_failed", {{"error", ok.error().message}});
    }
    return fail(updated.error());
  }
  std::vector<std::string> dropped;
  const auto set = sealed_set(base, desired, dropped);
  std::string note = "union of " + modules_list(set) + " at " + env->paths.mount_point.string() + " (base " + base.str() + ")";
  for (const auto& f : updated->failed) note += "; left out " + f.name + ": " + f.reason;
  return StageOutcome{.note = note};
}

Status write_handoff(const AgentConfig& config) {
  return write_file_atomic(config.root / kHandoffFile, "switch-root /" + std::string(kSysroot) + "\n", 0644);
}

}  // namespace cairn::agent::boot
