// The operations on the node's set of attached modules, over the store, verify, fetch and
// the union: attach (fetch, verify, store, remount), detach, and reconcile with a desired set.
// Each change re-verifies every module before it is mounted, applies the union atomically,
// then saves the attached list and collects the store's garbage.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "agent/modules/fetch.hpp"
#include "agent/modules/mounter.hpp"
#include "agent/modules/policy.hpp"  // receive_policy for the service (h-modpolicy)
#include "agent/modules/store.hpp"
#include "agent/modules/union.hpp"
#include "agent/modules/verify.hpp"
#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/protocol/messages.hpp"

namespace cairn::agent::modules {

struct ModulesEnv {
  ModuleStore store;
  UnionPaths paths;
  TrustPolicy policy;
  std::optional<RegistrySettings> registry;
  // false only with a fake Mounter (unit tests): nothing is really mounted, so the checks that
  // look into a mounted layer or the new union are skipped; the re-verification still runs.
  bool inspect_mounts = true;
};
// From the agent's configuration: store <persist>/cairn/modules, run dir <root>/run/cairn/modules;
// the trust policy as it holds at `now_rfc3339` (an accepted distributed policy may have expired).
Result<ModulesEnv> modules_env(const AgentConfig& config, const std::string& now_rfc3339);

struct ChangeOutcome {
  std::vector<AttachedModule> attached;
  UnionOutcome union_outcome;
  std::size_t gc_removed = 0;
};

// Makes `next` the attached set: re-verifies, mounts the union, saves, collects garbage.
// Modules the union left out stay out of the saved list (their reasons in union_outcome).
Result<ChangeOutcome> apply_set(ModulesEnv& env, Mounter& mounter, std::vector<AttachedModule> next);

// Fetches NAME:VERSION from the registry, verifies it against the trust policy (and the
// expected name and version), stores its parts. Does not attach it.
Result<AttachedModule> fetch_and_verify(ModulesEnv& env, oci::Registry& registry, const std::string& name,
                                        const std::string& version, const std::string& now_rfc3339);

// The same for a reference pinned by digest (`update`): HOST/PREFIX/NAME@sha256:...
Result<AttachedModule> fetch_and_verify_ref(ModulesEnv& env, oci::Registry& registry, const oci::Reference& ref,
                                            const std::string& name, std::optional<std::string> version,
                                            const std::string& now_rfc3339);

// Attach: `module` replaces any attached one of the same name. When the union leaves it out,
// the previous set is put back and the reason returned as the error.
Result<ChangeOutcome> attach(ModulesEnv& env, Mounter& mounter, AttachedModule module);
// Errc::usage when no such module is attached.
Result<ChangeOutcome> detach(ModulesEnv& env, Mounter& mounter, const std::string& name);

// The desired set of the last heartbeat reply, kept for `update` (<persist>/cairn/modules/desired.json).
Status save_desired(const AgentConfig& config, const std::vector<protocol::ModuleRef>& desired);
Result<std::optional<std::vector<protocol::ModuleRef>>> load_desired(const AgentConfig& config);

struct UpdateOutcome {
  ChangeOutcome change;
  std::vector<Exclusion> failed;  // desired modules that could not be fetched or verified
  std::optional<Error> first_error;
};
// Reconciles the attached set with `desired` (name + OCI manifest digest): fetches and verifies
// what is new, drops what is no longer desired, applies the union once. A module that fails is
// left out with its reason (an attached older version of it stays); the others proceed. A
// failed module that is required, or that another module of the set depends on, fails the
// whole change instead (Errc::refused naming it, event module.update_failed): nothing is
// mounted or unmounted and the attached list stays as it was.
// `stop` (h-apply), when given, is asked before each fetch and before the union changes: true
// abandons the update with Errc::temporary, nothing mounted or unmounted, no event recorded.
Result<UpdateOutcome> update(ModulesEnv& env, Mounter& mounter, oci::Registry& registry,
                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339,
                             const std::function<bool()>& stop = {});
// The same over any way of fetching: `fetch` fetches and verifies one desired module.
using FetchFn = std::function<Result<AttachedModule>(const protocol::ModuleRef& desired)>;
Result<UpdateOutcome> update(ModulesEnv& env, Mounter& mounter, const FetchFn& fetch,
                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339,
                             const std::function<bool()>& stop = {});
// The fetch of the registry overload: each desired module by its OCI manifest digest from
// env's registry (a manifest that does not hash to that digest is refused), then verified.
// Keeps references to env and registry.
FetchFn registry_fetch(ModulesEnv& env, oci::Registry& registry, const std::string& now_rfc3339);

// h-apply: `update` with the configuration's own parts, shared by `cairn-agent update` and the
// service's reconciler (agent/runtime/module_reconciler.hpp): modules_env(config), the
// configured registry over libcurl, the Linux mounter. One update at a time per persist root:
// <persist>/cairn/modules/update.lock (flock) is waited for up to lock_wait, then
// Errc::temporary.
struct UpdateHooks {
  std::function<bool()> stop{};  // as for update() above; also ends the wait for the lock
  // Wraps the registry's HttpClient (the service makes a stop abort a download in flight).
  std::function<std::unique_ptr<HttpClient>(std::unique_ptr<HttpClient>)> wrap_http{};
  std::chrono::milliseconds lock_wait{std::chrono::minutes(2)};
  const Clock* clock = nullptr;  // for the lock wait; nullptr: the system clock
};
Result<UpdateOutcome> update_from_config(const AgentConfig& config, const std::vector<protocol::ModuleRef>& desired,
                                         const std::string& now_rfc3339, const UpdateHooks& hooks = {});

// h-apply: whether `attached` is exactly `desired`: the same names, each attached from the
// desired OCI manifest digest (its source ends "@<digest>"), with the same required flag.
bool matches_desired(const std::vector<AttachedModule>& attached, const std::vector<protocol::ModuleRef>& desired);

// The rule above: the first of `failed` that is required in `desired` or that a module of
// `next` (the set that would be applied) depends on, as the error naming it; none: nullopt.
// `culprit`, when given, receives the failed module's name.
std::optional<Error> fatal_failure(const std::vector<protocol::ModuleRef>& desired, const std::vector<AttachedModule>& next,
                                   const std::vector<Exclusion>& failed, std::string* culprit = nullptr);

// Module events (fs-verity unavailable, a desired module refused). The commands that change
// the set (attach, update) run in their own process, so they leave events in
// <persist>/cairn/modules/events.pending (one JSON event per line, appended under flock, capped);
// the service drains that file into its durable event buffer before each event flush. Each
// event's id is stable per cause and digest, so control (which keeps one row per id) shows it
// once however often it is reported.
inline constexpr std::size_t kMaxPendingEventBytes = 256 * 1024;
Status record_event(const ModuleStore& store, const protocol::Event& event);
// Hands every pending event to `sink`, oldest first; the file is emptied only when every sink
// call succeeded (a failure keeps them all for the next drain: control drops duplicates).
Result<std::size_t> drain_events(const AgentConfig& config, const std::function<Status(const protocol::Event&)>& sink);
// The events of one change: fs-verity unavailable for each module newly in `attached` (not in
// `before` with the same image digest), warning once per image digest.
std::vector<protocol::Event> verity_events(const std::vector<AttachedModule>& before,
                                           const std::vector<AttachedModule>& attached);

// What the heartbeat reports: each attached module's image digest and whether it is mounted.
std::vector<protocol::ModuleRef> running_modules(const AgentConfig& config);

}  // namespace cairn::agent::modules
