#include "control/service/heartbeat_writer.hpp"

#include <algorithm>
#include <iterator>
#include <optional>

#include "common/log.hpp"
#include "common/time.hpp"
#include "control/service/module_catalog.hpp"  // modules (issue 14)

namespace cairn::control {

void HeartbeatWriter::start() { thread_ = std::thread([this] { run(); }); }

void HeartbeatWriter::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // the writer drains what is pending first
}

void HeartbeatWriter::submit(const AuthorizedNode& node, protocol::HeartbeatRequest request,
                             ControlService::HeartbeatDone done) {
  cap_events(request.events, kMaxEventsPerHeartbeat);
  std::optional<ApiError> refused;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      refused = api_error(503, "shutting_down", "the control service is stopping",
                          "retry against the restarted service");
    } else if (pending_.size() >= config_.max_pending_heartbeats) {
      refused = api_error(503, "busy", "too many heartbeats waiting to be stored", "retry after a backoff");
    } else {
      pending_.push_back(
          {HeartbeatRecord{node.node_id(), to_unix_ms(clock_.now()), std::move(request)}, std::move(done)});
    }
  }
  if (refused) {
    done(std::unexpected(std::move(*refused)));
    return;
  }
  cv_.notify_one();
}

void HeartbeatWriter::run() {
  std::vector<Pending> batch;
  batch.reserve(kMaxBatch);
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping, and everything is written
      const std::size_t n = std::min(pending_.size(), kMaxBatch);
      std::move(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n), std::back_inserter(batch));
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    commit(batch);
    batch.clear();
  }
}

void HeartbeatWriter::commit(std::vector<Pending>& batch) {
  std::vector<HeartbeatRecord> records;
  records.reserve(batch.size());
  for (auto& p : batch) records.push_back(std::move(p.record));
  auto results = store_.write_heartbeats(records);

  if (results) {
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (!(*results)[i]) continue;
      const auto& r = records[i];
      if (auth_.heard(r.node_id, r.received_at_ms)) {
        log::info("node.ready", {{"node", r.node_id}});
        events_.record(r.node_id, "control.node.ready." + std::to_string(r.received_at_ms), "info", "node.ready",
                       "heartbeats arrive again: the node is Ready");
      }
    }
  } else {
    log::error("heartbeat.commit_failed", {{"count", records.size()}, {"message", results.error().message}});
  }

  protocol::HeartbeatResponse reply;
  reply.server_time = format_rfc3339(clock_.now());
  reply.next_interval_s = config_.heartbeat_interval.count();
  const auto catalog = load_catalog(store_);  // modules (issue 14): the desired sets, read once per batch
  // modules (h-modpolicy): cached, read from the store at most once a second (h-policystore:
  // ModulePolicy::kRefreshPeriod), not per heartbeat
  if (module_policy_ != nullptr) reply.module_policy = module_policy_->current();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    ApiResult<protocol::HeartbeatResponse> answer = reply;
    // modules (issue 14): selectors match the node's stored labels, not its heartbeat's (h-modctl)
    answer->desired_modules = desired_for_node(store_, catalog, records[i].node_id);
    if (!results) {
      answer = std::unexpected(api_error(503, "store_error", results.error().message, "retry after a backoff"));
    } else if (!(*results)[i]) {
      answer = std::unexpected(api_error(500, "store_error", (*results)[i].error().message));
    } else {
      tasks_.annotate_heartbeat(records[i].node_id, records[i].request, records[i].received_at_ms, *answer);
    }
    try {
      batch[i].done(std::move(answer));
    } catch (const std::exception& e) {
      log::error("heartbeat.done_threw", {{"message", e.what()}});
    }
  }
}

}  // namespace cairn::control
