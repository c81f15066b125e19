// The heartbeat writer: heartbeats wait in a bounded queue and one thread commits them in
// batches (group commit: one transaction takes every heartbeat waiting, up to kMaxBatch;
// while one batch commits the next one fills). Each answer goes out once its heartbeat is
// durably stored; a committed heartbeat makes its node Ready in the authorisation cache.
// Each answer also says whether tasks wait for the node and which of its running tasks were
// cancelled (TaskQueue::annotate_heartbeat: an in-memory index, no scan per heartbeat).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.hpp"
#include "control/service.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/event_log.hpp"
#include "control/service/module_policy.hpp"  // modules (h-modpolicy)
#include "control/service/task_queue.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

class HeartbeatWriter {
 public:
  static constexpr std::size_t kMaxBatch = 1000;
  // Events a heartbeat may carry; more are dropped (the agent keeps them for the next one).
  static constexpr std::size_t kMaxEventsPerHeartbeat = 100;

  HeartbeatWriter(const ServiceConfig& config, const Clock& clock, Store& store, AuthCache& auth,
                  EventLog& events, TaskQueue& tasks)
      : config_(config), clock_(clock), store_(store), auth_(auth), events_(events), tasks_(tasks) {}
  HeartbeatWriter(const HeartbeatWriter&) = delete;
  HeartbeatWriter& operator=(const HeartbeatWriter&) = delete;
  ~HeartbeatWriter() { stop(); }

  void start();
  // Refuses new heartbeats, writes and answers those waiting, joins the thread.
  void stop();

  void submit(const AuthorizedNode& node, protocol::HeartbeatRequest request,
              ControlService::HeartbeatDone done);

  // modules (h-modpolicy): the signed trust policy every reply carries; set before start().
  void set_module_policy(ModulePolicy* policy) { module_policy_ = policy; }

 private:
  struct Pending {
    HeartbeatRecord record;
    ControlService::HeartbeatDone done;
  };
  void run();
  void commit(std::vector<Pending>& batch);

  const ServiceConfig& config_;
  const Clock& clock_;
  Store& store_;
  AuthCache& auth_;
  EventLog& events_;
  TaskQueue& tasks_;  // the reply's work_waiting and cancel_tasks
  ModulePolicy* module_policy_ = nullptr;  // modules (h-modpolicy)

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace cairn::control
