// The service's module reconciler (issue 14, h-apply): the node converges on the desired
// module set of the heartbeat replies with no hands on it. After each reply the service offers
// the set (and the version of the accepted trust policy); when it is not the set the node was
// last brought to, and the attached set is not already that set, the reconciler runs the same
// update as `cairn-agent update` on its own worker thread (at most one at a time), so a fetch
// never holds up a heartbeat, a lease or the stop signal.
//
// What it compares: name + OCI manifest digest + required flag of each module, and the policy
// version. The set it last brought the node to is kept in <persist>/cairn/modules/reconciled.json;
// between two changes of control's set, what an operator did by hand on the node (attach,
// detach) stands. A node that never reconciled starts from the empty set.
//
// Failures: an update that fails, or that leaves a desired module out, is tried again after a
// backoff (doubling from min to max, "equal jitter", reset on success), not on every heartbeat;
// a refusal for a permanent reason (Errc::refused: signature, trust policy, a required module;
// Errc::data: digest mismatch, bad manifest) waits the capped backoff. A new desired set (or a
// new policy version) is tried at once.
//
// Stop: request_stop() makes the update give up between two steps (before each fetch, before
// the union changes; modules::update's `stop`) and aborts a download in flight, so nothing is
// left half-mounted (the union's switch itself is atomic, modules/union.hpp); wait() waits for
// the worker until a deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/modules/attachments.hpp"
#include "common/clock.hpp"
#include "common/fd.hpp"
#include "common/http.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct ReconcilerOptions {
  std::chrono::milliseconds min_backoff{1000};
  std::chrono::milliseconds max_backoff{std::chrono::minutes(5)};
};

// One reconciliation: make the attached set `desired`. `stop` turns true when the service is
// stopping. Runs on the worker thread: it must not touch the service's state.
using ModuleApplyFn = std::function<Result<modules::UpdateOutcome>(
    const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339, const std::function<bool()>& stop)>;
// The attached list as the node's store has it now (read on the service's thread).
using AttachedFn = std::function<Result<std::vector<modules::AttachedModule>>()>;

// The production apply: modules::update_from_config on a copy of `config`, with a registry
// connection that a stop aborts (a request is not sent, a download stops at its next chunk).
ModuleApplyFn make_module_apply(const AgentConfig& config);
// The registry connection of make_module_apply: once `stop` is true a request is not sent and a
// streamed download ends at its next chunk, both as Errc::temporary (which the registry client
// does not retry).
std::unique_ptr<HttpClient> stoppable_http(std::unique_ptr<HttpClient> inner, std::function<bool()> stop);
// The production attached list: the store of <persist>/cairn/modules.
AttachedFn make_attached_reader(const AgentConfig& config);
// Where the reconciler keeps the set it last brought the node to.
std::filesystem::path reconciled_file(const AgentConfig& config);

// A desired set as the reconciler compares it.
struct DesiredState {
  std::vector<protocol::ModuleRef> desired;
  std::uint64_t policy_version = 0;  // of the accepted trust policy; 0: none
};

class ModuleReconciler {
 public:
  // What an update that ended came to (tick() returns it once).
  struct Finished {
    DesiredState state;                             // the set it applied
    bool applied = false;                           // every desired module is attached now
    bool abandoned = false;                         // given up on a stop; nothing changed
    bool changed = false;                           // the attached set is not the one before: a change landed
    std::optional<modules::UpdateOutcome> outcome;  // update ran to the end (maybe leaving modules out)
    std::optional<Error> error;                     // update's error, or the first left-out module's
    std::chrono::milliseconds retry_in{0};          // not applied: the wait before the next try
  };

  ModuleReconciler(const Clock& clock, std::function<double()> random01, ReconcilerOptions options,
                   ModuleApplyFn apply, AttachedFn attached, std::filesystem::path record_file);
  // Asks a running update to stop and joins it (wait() first to bound that).
  ~ModuleReconciler();
  ModuleReconciler(const ModuleReconciler&) = delete;
  ModuleReconciler& operator=(const ModuleReconciler&) = delete;

  // The service's thread, after a heartbeat reply: the set control wants now; then tick().
  std::optional<Finished> offer(DesiredState state);
  // The service's thread, whenever it wakes: collects an update that ended (returned once),
  // then starts the next one if the set differs and no backoff holds it. Never blocks.
  std::optional<Finished> tick();

  [[nodiscard]] bool busy() const { return job_ != nullptr; }
  // When a held retry is due (the service wakes for it); nullopt: nothing held.
  [[nodiscard]] std::optional<Clock::MonoTime> retry_at() const;
  // Updates started so far (tests, logs).
  [[nodiscard]] std::uint64_t attempts() const { return attempts_; }
  // Consecutive failures of the current set.
  [[nodiscard]] int failures() const { return failures_; }

  // SIGTERM: no new update starts; a running one gives up at its next step.
  void request_stop();
  // Waits (on the clock) until the running update ended or `deadline`; true when none runs
  // any more. An update that ended is settled (a set that landed is recorded).
  bool wait(Clock::MonoTime deadline);
  // Leaves a worker that did not end by the deadline to the process' exit (it holds only its
  // own state and a copy of the configuration).
  void abandon();

 private:
  struct Job;
  void start();
  Finished settle();
  void record(const DesiredState& state);

  const Clock& clock_;
  std::function<double()> random01_;
  ReconcilerOptions options_;
  ModuleApplyFn apply_;
  AttachedFn attached_;
  std::filesystem::path record_file_;

  std::optional<DesiredState> latest_;      // the last set control sent
  std::optional<DesiredState> reconciled_;  // the set the node was last brought to
  std::string held_key_;                    // the set whose failure holds the retry
  Clock::MonoTime retry_at_{};
  int failures_ = 0;
  std::uint64_t attempts_ = 0;
  bool stopping_ = false;
  std::shared_ptr<Job> job_;
  std::thread thread_;
};

// The set as one string (sorted names, digests, required flags, policy version): equal sets,
// equal keys.
std::string desired_key(const DesiredState& state);

}  // namespace cairn::agent
