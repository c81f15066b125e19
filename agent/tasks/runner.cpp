#include "agent/tasks/runner.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "common/json.hpp"
#include "common/log.hpp"

namespace cairn::agent::tasks {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::int64_t kDefaultLeaseS = 60;
constexpr std::int64_t kMinLeaseS = 3;

void signal_fd(int fd) {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd, &one, sizeof one);
}

void drain_fd(int fd) {
  std::uint64_t value = 0;
  [[maybe_unused]] auto n = ::read(fd, &value, sizeof value);
}

// An answer that means this node no longer holds the lease (another attempt may): the fence
// is stale (409), the task is gone (404) or control refuses the node (401/403).
bool lease_gone(const Error& e) {
  return e.code == Errc::refused || e.code == Errc::data || e.code == Errc::internal;
}

std::string describe(const protocol::LeasedTask& t) {
  return "task " + t.id + " (" + t.kind + ", attempt " + std::to_string(t.attempt) + ")";
}

}  // namespace

protocol::CompleteRequest completion(const TaskResult& r, std::int64_t fence) {
  protocol::CompleteRequest c;
  c.fence = fence;
  c.outcome = r.outcome;
  c.reason = r.reason;
  c.exit_code = r.exit_code;
  c.error = r.error.substr(0, 1024);
  c.output = r.output.size() > protocol::kMaxTaskOutputBytes
                 ? r.output.substr(r.output.size() - protocol::kMaxTaskOutputBytes)
                 : r.output;
  c.output_truncated = r.output_truncated || r.output.size() > protocol::kMaxTaskOutputBytes;
  c.output_bytes = std::max<std::int64_t>(r.output_bytes, static_cast<std::int64_t>(r.output.size()));
  c.duration_ms = r.duration_ms;
  return c;
}

Runner::Runner(KindSettings settings, RunnerOptions options, const Root& root, const Clock& clock,
               ChannelFactory channels, events::EventBuffer* events)
    : settings_(std::move(settings)), options_(options), root_(root), clock_(clock), channels_(std::move(channels)),
      events_(events), finished_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

Runner::~Runner() { drain(clock_.monotonic()); }

void Runner::event(std::string_view severity, std::string_view kind, const std::string& message) {
  log::event(severity == "info" ? log::Level::info : log::Level::warning, kind, {{"message", message}});
  if (!events_) return;
  if (auto ok = events_->append(severity, kind, message); !ok) {
    log::error("events.append_failed", {{"kind", kind}, {"error", ok.error().message}});
  }
}

std::size_t Runner::running_count() const {
  std::lock_guard l(m_);
  return static_cast<std::size_t>(
      std::count_if(slots_.begin(), slots_.end(), [](const auto& kv) { return !kv.second->done.load(); }));
}

std::size_t Runner::free_slots() const {
  const auto running = running_count();
  return running >= options_.max_concurrent ? 0 : options_.max_concurrent - running;
}

std::vector<std::string> Runner::running_ids() const {
  std::lock_guard l(m_);
  std::vector<std::string> ids;
  for (const auto& [id, slot] : slots_) {
    if (!slot->done) ids.push_back(id);
  }
  return ids;
}

void Runner::start(protocol::LeasedTask task) {
  std::lock_guard l(m_);
  if (slots_.contains(task.id)) return;  // leased again while still here: the running attempt goes on
  auto slot = std::make_unique<Slot>();
  slot->task = std::move(task);
  slot->cancel_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  Slot& s = *slot;
  const std::string id = s.task.id;
  slots_.emplace(id, std::move(slot));
  s.thread = std::thread([this, &s] { supervise(s); });
}

void Runner::stop_slot(Slot& slot, Stop why) {
  Stop expected = Stop::none;
  if (slot.stop.compare_exchange_strong(expected, why)) signal_fd(slot.cancel_fd.get());
}

void Runner::cancel(const std::string& id) {
  std::lock_guard l(m_);
  if (auto it = slots_.find(id); it != slots_.end() && !it->second->done) stop_slot(*it->second, Stop::cancelled);
}

std::size_t Runner::reap() {
  std::vector<std::unique_ptr<Slot>> done;
  {
    std::lock_guard l(m_);
    for (auto it = slots_.begin(); it != slots_.end();) {
      if (it->second->done) {
        done.push_back(std::move(it->second));
        it = slots_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : done) s->thread.join();
  if (finished_) drain_fd(finished_.get());
  return done.size();
}

void Runner::drain(Clock::MonoTime deadline) {
  while (running_count() > 0 && clock_.monotonic() < deadline) {
    clock_.sleep_until(deadline, finished_.get());
    drain_fd(finished_.get());
  }
  {
    std::lock_guard l(m_);
    for (auto& [id, slot] : slots_) {
      if (!slot->done) stop_slot(*slot, Stop::shutdown);
    }
  }
  std::vector<std::unique_ptr<Slot>> all;
  {
    std::lock_guard l(m_);
    for (auto& [id, slot] : slots_) all.push_back(std::move(slot));
    slots_.clear();
  }
  for (auto& s : all) {
    if (s->thread.joinable()) s->thread.join();
  }
}

Result<protocol::CompleteBatchResponse> TaskChannel::complete_batch(const protocol::CompleteBatchRequest& batch) {
  protocol::CompleteBatchResponse out;
  for (const auto& item : batch.completions) {
    protocol::CompleteItemResult r;
    r.id = item.id;
    auto answer = complete(item.id, item.request);
    if (answer) {
      r.state = answer->state;
    } else {
      // back to a status the runner reads the same way (lease_gone)
      const Errc code = answer.error().code;
      r.status = code == Errc::refused ? 409 : code == Errc::data ? 400 : code == Errc::internal ? 404 : 503;
      r.code = std::string(errc_name(code));
      r.message = answer.error().message;
      r.hint = answer.error().hint;
    }
    out.results.push_back(std::move(r));
  }
  return out;
}

namespace {

// An item's answer as complete() would have given it (statuses as the control client maps
// them: errc_for_http_status).
Result<protocol::CompleteResponse> item_answer(const protocol::CompleteItemResult& r) {
  if (r.ok()) return protocol::CompleteResponse{r.state};
  Errc code = Errc::internal;  // 404, 405: the protocol disagrees
  if (r.status == 401 || r.status == 403 || r.status == 409) code = Errc::refused;
  else if (r.status == 429 || r.status == 503) code = Errc::temporary;
  else if (r.status >= 500) code = Errc::unavailable;
  else if (r.status == 400 || r.status == 413 || r.status == 422) code = Errc::data;
  return fail(code, "complete task " + r.id + ": " + r.code + ": " + r.message, r.hint);
}

}  // namespace

std::size_t Runner::completions_waiting() {
  std::lock_guard lock(complete_m_);
  return complete_queue_.size();
}

Result<protocol::CompleteResponse> Runner::complete_together(TaskChannel& channel, const std::string& id,
                                                             const protocol::CompleteRequest& request) {
  PendingCompletion me;
  me.id = id;
  me.request = &request;
  me.json_bytes = dump_json(protocol::to_json(request)).size() + id.size() + 16;
  std::unique_lock lock(complete_m_);
  complete_queue_.push_back(&me);
  while (!me.answer) {
    if (complete_busy_) {
      complete_cv_.wait(lock);
      continue;
    }
    // This thread sends what is queued now (its own completion among them, or ahead of it).
    complete_busy_ = true;
    std::vector<PendingCompletion*> batch;
    std::size_t bytes = 0;
    auto it = complete_queue_.begin();
    while (it != complete_queue_.end() && batch.size() < protocol::kMaxCompleteBatch &&
           (batch.empty() || bytes + (*it)->json_bytes <= kMaxCompleteBatchBytes)) {
      bytes += (*it)->json_bytes;
      batch.push_back(*it);
      ++it;
    }
    complete_queue_.erase(complete_queue_.begin(), it);
    lock.unlock();
    // Answers are made here and handed over under the lock (the waiters read them there).
    std::vector<std::optional<Result<protocol::CompleteResponse>>> answers(batch.size());
    if (batch.size() == 1) {
      answers[0] = channel.complete(batch[0]->id, *batch[0]->request);
    } else {
      protocol::CompleteBatchRequest body;
      for (const auto* p : batch) body.completions.push_back({p->id, *p->request});
      auto sent = channel.complete_batch(body);
      if (sent && sent->results.size() == batch.size()) {
        for (std::size_t i = 0; i < batch.size(); ++i) answers[i] = item_answer(sent->results[i]);
      } else {
        // A control service without batches (404), or the request failed as a whole: each
        // completion on its own, which answers each exactly (a retry is harmless: idempotent).
        log::warn("task.complete_batch_failed",
                  {{"tasks", static_cast<std::int64_t>(batch.size())},
                   {"error", sent ? std::string("answer of another length") : sent.error().message}});
        for (std::size_t i = 0; i < batch.size(); ++i) answers[i] = channel.complete(batch[i]->id, *batch[i]->request);
      }
    }
    lock.lock();
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i]->answer = std::move(answers[i]);
    complete_busy_ = false;
    complete_cv_.notify_all();
  }
  return std::move(*me.answer);
}

void Runner::supervise(Slot& slot) {
  const protocol::LeasedTask& t = slot.task;
  event("info", "task.started", describe(t) + " started");
  auto channel = channels_();
  UniqueFd worker_done(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  TaskResult result;
  std::thread worker([&] {
    const TaskContext ctx{.root = root_, .clock = clock_, .timeout = seconds(std::max<std::int64_t>(0, t.timeout_s)),
                          .cancel_fd = slot.cancel_fd.get(), .kill_grace = options_.kill_grace};
    result = run_task(t.kind, t.args, settings_, ctx);
    signal_fd(worker_done.get());
  });

  // Keep the lease while the kind runs: the first extend at once (it tells control the task
  // runs), then every third of the lease; a transient failure is retried sooner, until the
  // lease would have run out.
  std::int64_t lease_s = t.lease_s > 0 ? std::max(t.lease_s, kMinLeaseS) : kDefaultLeaseS;
  auto lease_end = clock_.monotonic() + seconds(lease_s);
  auto next_extend = clock_.monotonic();
  const auto far = clock_.monotonic() + std::chrono::hours(24 * 365);
  for (;;) {
    const bool lost = slot.stop.load() == Stop::lease_lost;
    if (clock_.sleep_until(lost ? far : next_extend, worker_done.get())) break;
    if (lost) continue;
    auto answer = channel->extend(t.id, {.fence = t.fence, .lease_s = lease_s, .running = true});
    const auto now = clock_.monotonic();
    if (answer) {
      if (answer->lease_s > 0) lease_s = std::max(answer->lease_s, kMinLeaseS);
      lease_end = now + seconds(lease_s);
      next_extend = now + milliseconds(lease_s * 1000 / 3);
      if (answer->cancel) stop_slot(slot, Stop::cancelled);
      continue;
    }
    if (lease_gone(answer.error()) || now >= lease_end) {
      stop_slot(slot, Stop::lease_lost);
      event("warning", "task.lease_lost", describe(t) + " stopped: its lease is lost (" + answer.error().message + ")");
      continue;
    }
    log::warn("task.extend_failed", {{"task", t.id}, {"error", answer.error().message}});
    next_extend = std::min(lease_end, now + std::max<milliseconds>(milliseconds(lease_s * 1000 / 6), milliseconds(500)));
  }
  worker.join();

  const Stop why = slot.stop.load();
  if (why != Stop::lease_lost) {
    auto request = completion(result, t.fence);
    if (result.outcome == "cancelled" && why == Stop::shutdown) {
      request.outcome = "failed";
      request.reason = protocol::FailureReason::killed;
      request.error = "the agent stopped (SIGTERM) before the task finished";
    }
    int tries = 0;
    for (;;) {
      auto answer = complete_together(*channel, t.id, request);
      ++tries;
      if (answer) {
        if (result.after_complete && request.outcome == "succeeded") {
          if (auto ok = result.after_complete(); !ok) {
            event("warning", "task.after_complete_failed", describe(t) + ": " + ok.error().message);
          }
        }
        break;
      }
      const auto now = clock_.monotonic();
      if (lease_gone(answer.error()) || now + options_.complete_retry >= lease_end ||
          (why == Stop::shutdown && tries >= 2)) {
        event("warning", "task.complete_failed",
              describe(t) + ": its result could not be reported (" + answer.error().message +
                  "); control runs it again after the lease");
        break;
      }
      clock_.sleep_until(now + options_.complete_retry);
    }
    std::string line = describe(t) + " " + request.outcome;
    if (request.exit_code) line += ", exit code " + std::to_string(*request.exit_code);
    if (request.reason) line += ", reason " + std::string(protocol::failure_reason_name(*request.reason));
    if (!request.error.empty()) line += ": " + request.error;
    event(request.outcome == "failed" ? "warning" : "info", "task." + request.outcome, line);
  }
  slot.done = true;
  signal_fd(finished_.get());
}

}  // namespace cairn::agent::tasks
