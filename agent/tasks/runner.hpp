// The runner: leased tasks running at once, up to a limit, each on its own thread that runs
// the kind (a second thread) and keeps its lease: extends it at a third of its length,
// stops the task when control says it was cancelled or the lease is lost, and completes it
// with its outcome, exit code and capped output. Every transition goes to the event buffer.
// Tasks that finish together are completed together: while one thread's completion is in
// flight, the others queue theirs, and the next sends every queued one in one request
// (group commit; no timer: a lone task is completed at once, alone).
//
// How a task ends when it is stopped:
//   cancelled by an operator -> complete "cancelled"
//   lease lost (control refused an extend, or the lease ran out unextended) -> stopped, not
//     completed: another attempt may own it now, and control would refuse this fence anyway
//   the service stopping (SIGTERM) and the task still running at the stop timeout -> stopped
//     and completed "failed" with reason "killed": a transient reason, so control queues it
//     again at once (with backoff) instead of waiting for the lease to expire.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/events/buffer.hpp"
#include "agent/tasks/kind.hpp"
#include "common/clock.hpp"
#include "common/fd.hpp"
#include "common/protocol/tasks.hpp"
#include "common/root.hpp"

namespace cairn::agent::tasks {

// A task's line to control (POST /v1/tasks/{id}/extend and /complete); one per task thread.
class TaskChannel {
 public:
  virtual ~TaskChannel() = default;
  virtual Result<protocol::ExtendResponse> extend(const std::string& id, const protocol::ExtendRequest& request) = 0;
  virtual Result<protocol::CompleteResponse> complete(const std::string& id,
                                                      const protocol::CompleteRequest& request) = 0;
  // Several completions in one request (POST /v1/tasks/complete), one answer per item. The
  // default sends them one by one (a channel to a control service without batches).
  virtual Result<protocol::CompleteBatchResponse> complete_batch(const protocol::CompleteBatchRequest& batch);
};
using ChannelFactory = std::function<std::unique_ptr<TaskChannel>()>;

struct RunnerOptions {
  std::size_t max_concurrent = 2;
  std::chrono::milliseconds kill_grace{std::chrono::seconds(5)};  // SIGTERM -> SIGKILL
  // How often a failed complete is tried again, until the lease runs out.
  std::chrono::milliseconds complete_retry{std::chrono::seconds(2)};
};

class Runner {
 public:
  Runner(KindSettings settings, RunnerOptions options, const Root& root, const Clock& clock, ChannelFactory channels,
         events::EventBuffer* events);
  // Stops what still runs (as at the end of drain) and joins every thread.
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  [[nodiscard]] std::size_t free_slots() const;
  [[nodiscard]] std::vector<std::string> running_ids() const;
  [[nodiscard]] std::size_t running_count() const;
  // Completions queued behind the one in flight (they go together in the next request).
  [[nodiscard]] std::size_t completions_waiting();

  // Starts a leased task on its own thread (the caller leased at most free_slots()).
  void start(protocol::LeasedTask task);
  // An operator cancelled it (a lease or heartbeat answer said so): stop it, complete "cancelled".
  void cancel(const std::string& id);
  // Joins the threads of finished tasks; returns how many there were.
  std::size_t reap();
  // Readable (eventfd) when a task finished: the service loop may lease again.
  [[nodiscard]] int finished_fd() const { return finished_.get(); }

  // SIGTERM: waits until `deadline` for running tasks, then stops the rest (completed
  // failed/killed), and joins everything.
  void drain(Clock::MonoTime deadline);

 private:
  enum class Stop { none, cancelled, lease_lost, shutdown };
  struct Slot {
    protocol::LeasedTask task;
    UniqueFd cancel_fd;  // eventfd given to the kind
    std::atomic<Stop> stop{Stop::none};
    std::atomic<bool> done{false};
    std::thread thread;
  };
  void supervise(Slot& slot);
  // This task's completion, sent with those of other tasks finishing at the same time.
  Result<protocol::CompleteResponse> complete_together(TaskChannel& channel, const std::string& id,
                                                       const protocol::CompleteRequest& request);
  struct PendingCompletion {
    std::string id;
    const protocol::CompleteRequest* request = nullptr;
    std::size_t json_bytes = 0;
    std::optional<Result<protocol::CompleteResponse>> answer;
  };
  void stop_slot(Slot& slot, Stop why);
  void event(std::string_view severity, std::string_view kind, const std::string& message);

  KindSettings settings_;
  RunnerOptions options_;
  const Root& root_;
  const Clock& clock_;
  ChannelFactory channels_;
  events::EventBuffer* events_;
  UniqueFd finished_;
  mutable std::mutex m_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;

  // batch complete: completions waiting for a request, and whether one is in flight
  std::mutex complete_m_;
  std::condition_variable complete_cv_;
  std::vector<PendingCompletion*> complete_queue_;
  bool complete_busy_ = false;
};

// A request carries at most this many completions and about this many bytes of JSON (the
// control service takes 1 MiB bodies).
inline constexpr std::size_t kMaxCompleteBatchBytes = 768 * 1024;

// The CompleteRequest of a finished attempt.
protocol::CompleteRequest completion(const TaskResult& result, std::int64_t fence);

}  // namespace cairn::agent::tasks
