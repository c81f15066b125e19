// The task queue of cairn-control (issue 13): what an operator submits, what a node leases,
// extends and completes (fenced), and the sweep that returns expired leases to the queue and
// prunes history. Placement and admission are decided by the store inside the lease
// transaction; this class validates input, computes a node's budget from its last heartbeat
// (with headroom), the retry backoff (exponential, jittered) and the heartbeat's hints.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/protocol/tasks.hpp"
#include "control/service.hpp"
#include "control/service/event_log.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

// The delay before retry `attempt` (1-based: the attempt that just failed) may run:
// base * 2^(attempt-1), capped, then "equal jitter": half of it fixed, half random
// (unit in [0, 1)), so nodes failing together do not retry together.
std::int64_t retry_backoff_ms(std::int64_t attempt, std::int64_t base_ms, std::int64_t cap_ms, double unit);

// What a node may still reserve, from its last heartbeat: each resource's total times the
// headroom, minus what is in use (load average as CPUs; memory not available; disk not free).
// A node over its headroom gets a negative budget: nothing more, not even a task without
// reservations.
TaskResources node_budget(const protocol::HeartbeatRequest& last, const ServiceConfig& config);

// Checks an operator's task (POST /v1/admin/tasks) and turns it into a record to insert:
// unknown kinds are 400 unknown_kind, arguments of the wrong shape 400 invalid_args, other
// fields 400 invalid_request; each message names the field.
ApiResult<TaskRecord> task_from_submission(const Json& body, std::int64_t now_ms);

class TaskQueue {
 public:
  // A source of uniform numbers in [0, 1) for backoff jitter (tests inject a fixed one).
  using Random = std::function<double()>;

  // `events`: where control's own task events go (task.dead, task.lease_expired,
  // task.cancelled: what an operator must see in `cairn-control events`); null: none.
  TaskQueue(const ServiceConfig& config, const Clock& clock, Store& store, Random random = {},
            EventLog* events = nullptr);
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;
  ~TaskQueue() { stop(); }

  void start();  // the sweep thread
  void stop();

  // node endpoints
  ApiResult<protocol::LeaseResponse> lease(const AuthorizedNode& node, const protocol::LeaseRequest& request);
  ApiResult<protocol::ExtendResponse> extend(const AuthorizedNode& node, std::string_view task_id,
                                             const protocol::ExtendRequest& request);
  ApiResult<protocol::CompleteResponse> complete(const AuthorizedNode& node, std::string_view task_id,
                                                 const protocol::CompleteRequest& request);

  // POST /v1/tasks/complete: several completions, one store transaction; one answer per item
  // (a refused item, e.g. a stale fence, refuses that task only).
  ApiResult<protocol::CompleteBatchResponse> complete_batch(const AuthorizedNode& node,
                                                            const protocol::CompleteBatchRequest& request);

  // admin
  ApiResult<Json> submit(const Json& body);
  // POST /v1/admin/tasks/batch {"tasks": [submission, ...]}: every item is checked first (one
  // bad item refuses the batch, naming its index), then all are inserted in one transaction.
  // -> {"tasks": [task + "created", ...]} in the batch's order.
  ApiResult<Json> submit_batch(const Json& body);
  static constexpr std::size_t kMaxSubmitBatch = 1000;
  ApiResult<Json> list(const TaskFilter& filter);
  ApiResult<Json> show(std::string_view id);
  ApiResult<Json> cancel(std::string_view id);

  // The heartbeat's answer for a node whose heartbeat was just stored: work_waiting from an
  // in-memory index of queued tasks (rebuilt every kIndexRefresh, or after a change made
  // here but at most every kIndexMinAge), cancel_tasks from the node's running tasks (point
  // lookups by id, only when the node runs some).
  // Also keeps the node's capabilities and resources for placement.
  void annotate_heartbeat(const std::string& node_id, const protocol::HeartbeatRequest& request,
                          std::int64_t received_at_ms, protocol::HeartbeatResponse& reply);

  // One pass of the sweep now: expired leases back to the queue (or dead); every
  // prune_period, history pruning. Returns the number of tasks whose lease expired.
  std::size_t sweep_once();

  // Counters of this replica and the store's counts by state (cached kCountsMaxAge).
  TaskMetrics metrics();
  static constexpr std::chrono::seconds kCountsMaxAge{5};

  static constexpr std::chrono::milliseconds kIndexRefresh{500};
  static constexpr std::chrono::milliseconds kIndexMinAge{50};
  static constexpr std::int64_t kIndexSize = 4096;        // queued heads kept in memory
  static constexpr std::size_t kIndexScan = 512;          // unaddressed heads checked per heartbeat
  static constexpr std::size_t kMaxRunningListed = 256;   // running ids a node may send
  static constexpr std::chrono::seconds kPrunePeriod{60};
  // A node's labels (and a heartbeat another replica stored) are re-read from the store
  // after this long; heartbeats read them only while a queued task has a selector.
  static constexpr std::chrono::seconds kNodeInfoTtl{60};

 private:
  struct NodeInfo {
    Labels labels;
    std::int64_t labels_read_ms = 0;  // 0: never read
    bool have_heartbeat = false;
    std::int64_t last_seen_ms = 0;
    protocol::HeartbeatRequest last;  // events dropped
  };
  struct QueuedIndex {
    std::int64_t built_mono_ms = 0;
    std::unordered_map<std::string, std::vector<TaskRecord>> addressed;  // by node id
    std::vector<TaskRecord> unaddressed;
    bool any_selector = false;
  };

  std::int64_t now_ms() const;
  // A node's completion checked and capped for the store; 400 when malformed.
  ApiResult<TaskCompletion> completion_of(const AuthorizedNode& node, std::string_view task_id,
                                          const protocol::CompleteRequest& request, std::int64_t now);
  std::int64_t backoff(std::int64_t attempt);
  Result<LeaseQuery> lease_query(const std::string& node_id);
  void refresh_node(const std::string& node_id, NodeInfo& info, std::int64_t now);
  std::shared_ptr<const QueuedIndex> queued_index();
  bool index_has_work(const QueuedIndex& index, const std::string& node_id, const NodeInfo& info,
                      std::int64_t now) const;
  void changed() { index_dirty_.store(true); }
  // Counters and control events for a task that reached `state` through a node's completion.
  void completed(const TaskCompletion& c, protocol::TaskState state);
  void count_completion(const std::string& outcome);
  void record_lease_latency(std::chrono::nanoseconds took);

  const ServiceConfig& config_;
  const Clock& clock_;
  Store& store_;
  Random random_;
  std::mutex random_mutex_;

  std::mutex nodes_mutex_;
  std::unordered_map<std::string, NodeInfo> nodes_;

  std::mutex index_mutex_;  // one refresh at a time
  std::shared_ptr<const QueuedIndex> index_;
  std::atomic<bool> index_dirty_{true};

  EventLog* events_;

  // metrics (h-taskbatch)
  std::atomic<std::int64_t> lease_requests_{0};
  std::atomic<std::int64_t> leased_{0};
  std::atomic<std::int64_t> expirations_{0};
  std::atomic<std::int64_t> dead_{0};
  std::mutex metrics_mutex_;  // the maps and the histogram (updated once per call, not per row)
  std::map<std::string, std::int64_t> completions_;
  std::array<std::int64_t, kTaskLeaseBuckets.size() + 1> lease_buckets_{};
  double lease_sum_s_ = 0;
  std::int64_t lease_count_ = 0;
  std::map<std::string, std::int64_t> counts_;
  std::optional<std::int64_t> counts_read_mono_ms_;

  std::mutex sweep_mutex_;
  std::optional<std::int64_t> last_prune_mono_ms_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace cairn::control
