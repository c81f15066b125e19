#include "control/service/task_queue.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <random>

#include "common/log.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace cairn::control {
namespace {

constexpr std::int64_t kMaxTimeoutS = 7LL * 24 * 3600;
constexpr std::int64_t kMaxAttempts = 100;
constexpr std::size_t kMaxKeyBytes = 128;
constexpr std::size_t kMaxArgsBytes = 256 * 1024;
constexpr std::size_t kMaxSelectorEntries = 32;
constexpr std::size_t kMaxCapabilities = 32;
constexpr std::size_t kMaxErrorBytes = 4096;
constexpr std::int64_t kMaxTasksListed = 10'000;
constexpr std::int64_t kMaxReservation = std::int64_t{1} << 50;  // 1 PiB, or 10^12 CPUs in millis
constexpr std::array<std::string_view, 5> kKinds = {"exec", "service.install", "service.remove", "inventory",
                                                    "reboot"};

std::string time_text(std::int64_t ms) { return format_rfc3339(from_unix_ms(ms)); }
Json opt_time(std::optional<std::int64_t> ms) { return ms ? Json(time_text(*ms)) : Json(nullptr); }

std::unexpected<ApiError> store_failure(const Error& e) {
  log::error("store.error", {{"message", e.message}});
  return refuse(500, "store_error", e.message, e.hint);
}

std::unexpected<ApiError> invalid(std::string field, std::string why, std::string hint = {}) {
  return refuse(400, "invalid_request", field + ": " + why, std::move(hint));
}
std::unexpected<ApiError> invalid_args(std::string_view kind, std::string why, std::string hint) {
  return refuse(400, "invalid_args", "args of a " + std::string(kind) + " task: " + why, std::move(hint));
}

bool printable_key(std::string_view s, std::size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// systemd unit names allow more, but a service name becomes a directory and a unit name:
// letters, digits, '-', '_', '.', not starting with '.'.
bool service_name_ok(std::string_view s) {
  if (s.empty() || s.size() > 64 || s.front() == '.') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
  });
}

std::optional<ApiError> check_args(std::string_view kind, const Json& args) {
  if (!args.is_object()) {
    return api_error(400, "invalid_args", "args of a " + std::string(kind) + " task: expected a JSON object",
                     "send \"args\": {...}");
  }
  auto err = [&](std::string why, std::string hint) { return invalid_args(kind, std::move(why), std::move(hint)).error(); };
  if (kind == "exec") {
    const std::string hint = R"(e.g. {"argv": ["uname", "-a"], "env": {"K": "V"}, "cwd": "/tmp"})";
    for (const auto& [key, value] : args.items()) {
      if (key != "argv" && key != "env" && key != "cwd") return err("unknown field '" + key.substr(0, 40) + "'", hint);
    }
    auto argv = args.find("argv");
    if (argv == args.end() || !argv->is_array() || argv->empty()) return err("argv must be a non-empty array of strings", hint);
    for (const auto& a : *argv) {
      if (!a.is_string()) return err("argv holds a non-string", hint);
    }
    if ((*argv)[0].get<std::string>().empty()) return err("argv[0] is empty", hint);
    if (auto env = args.find("env"); env != args.end() && !env->is_null()) {
      if (!env->is_object()) return err("env must be an object of strings", hint);
      for (const auto& [k, v] : env->items()) {
        if (k.empty() || k.find('=') != std::string::npos || !v.is_string()) {
          return err("env '" + k.substr(0, 40) + "' must be a variable name with a string value", hint);
        }
      }
    }
    if (auto cwd = args.find("cwd"); cwd != args.end() && !cwd->is_null() && !cwd->is_string()) {
      return err("cwd must be a string", hint);
    }
    return std::nullopt;
  }
  if (kind == "service.install" || kind == "service.remove") {
    auto name = args.find("name");
    if (name == args.end() || !name->is_string() || !service_name_ok(name->get<std::string>())) {
      return err("name must be 1-64 letters, digits, '-', '_' or '.' (not starting with '.')",
                 R"(e.g. {"name": "web"})");
    }
    return std::nullopt;
  }
  return std::nullopt;  // inventory, reboot: options the agent checks
}

Json task_json(const TaskRecord& t, bool with_output) {
  Json j = {{"id", t.id},
            {"seq", t.seq},
            {"kind", t.kind},
            {"state", protocol::task_state_name(t.state)},
            {"node", t.node_id ? Json(*t.node_id) : Json(nullptr)},
            {"selector", t.selector},
            {"capabilities", t.capabilities},
            {"min", {{"cpu_millis", t.min.cpu_millis}, {"mem_bytes", t.min.mem_bytes}, {"disk_bytes", t.min.disk_bytes}}},
            {"timeout_s", t.timeout_s},
            {"max_attempts", t.max_attempts},
            {"serial_key", t.serial_key ? Json(*t.serial_key) : Json(nullptr)},
            {"idempotency_key", t.idempotency_key ? Json(*t.idempotency_key) : Json(nullptr)},
            {"attempts", t.attempts},
            {"fence", t.fence},
            {"leased_by", t.leased_by ? Json(*t.leased_by) : Json(nullptr)},
            {"lease_expires_at", opt_time(t.lease_expires_ms)},
            {"not_before", t.not_before_ms > 0 ? Json(time_text(t.not_before_ms)) : Json(nullptr)},
            {"cancel_requested", t.cancel_requested},
            {"created_at", time_text(t.created_at_ms)},
            {"updated_at", time_text(t.updated_at_ms)},
            {"started_at", opt_time(t.started_at_ms)},
            {"finished_at", opt_time(t.finished_at_ms)},
            {"exit_code", t.exit_code ? Json(*t.exit_code) : Json(nullptr)},
            {"last_reason", t.last_reason ? Json(protocol::failure_reason_name(*t.last_reason)) : Json(nullptr)},
            {"last_error", t.last_error},
            {"output_bytes", t.output_bytes},
            {"output_truncated", t.output_truncated}};
  if (with_output) {
    auto args = parse_json(t.args_json, "stored task args");
    j["args"] = args ? *args : Json::object();
    j["output"] = t.output;
  }
  return j;
}

Json attempt_json(const TaskAttemptRecord& a) {
  return {{"attempt", a.attempt},
          {"fence", a.fence},
          {"node", a.node_id},
          {"leased_at", time_text(a.leased_at_ms)},
          {"started_at", opt_time(a.started_at_ms)},
          {"finished_at", opt_time(a.finished_at_ms)},
          {"outcome", a.outcome},
          {"reason", a.reason ? Json(protocol::failure_reason_name(*a.reason)) : Json(nullptr)},
          {"exit_code", a.exit_code ? Json(*a.exit_code) : Json(nullptr)},
          {"error", a.error}};
}

std::unexpected<ApiError> fence_refusal(FenceCheck check, std::string_view task_id, std::int64_t fence,
                                        std::string_view what) {
  const std::string id(task_id.substr(0, 64));
  switch (check) {
    case FenceCheck::not_found:
      return refuse(404, "task_not_found", "no task with id '" + id + "'", "stop it; it was pruned or never existed");
    case FenceCheck::stale:
      return refuse(409, "stale_fence",
                    std::string(what) + " task " + id + " with fence " + std::to_string(fence) +
                        ": this node no longer holds that lease (it expired or the task was leased again)",
                    "stop the task and drop its result; the current leaseholder reports it");
    case FenceCheck::finished:
      return refuse(409, "task_finished",
                    std::string(what) + " task " + id + " with fence " + std::to_string(fence) +
                        ": the task already finished with another outcome",
                    "drop this result; 'cairn-control task show " + id + "' shows the stored one");
    case FenceCheck::ok: break;
  }
  return refuse(500, "internal", "fence check: unexpected state");
}

// A UTF-8-agnostic cap keeping the tail (the end of a log says what went wrong).
void keep_tail(std::string& s, std::size_t max) {
  if (s.size() > max) s.erase(0, s.size() - max);
}

}  // namespace

std::int64_t retry_backoff_ms(std::int64_t attempt, std::int64_t base_ms, std::int64_t cap_ms, double unit) {
  if (attempt < 1) attempt = 1;
  double d = static_cast<double>(base_ms) * std::pow(2.0, static_cast<double>(std::min<std::int64_t>(attempt - 1, 40)));
  d = std::min(d, static_cast<double>(cap_ms));
  unit = std::clamp(unit, 0.0, 1.0);
  return static_cast<std::int64_t>(d / 2 + unit * d / 2);
}

TaskResources node_budget(const protocol::HeartbeatRequest& hb, const ServiceConfig& config) {
  // A node reports what it likes: clamp before converting (a double past int64 is UB).
  auto i64 = [](double v) {
    constexpr double kLimit = 9.0e18;
    if (!std::isfinite(v)) return std::int64_t{0};
    return static_cast<std::int64_t>(std::floor(std::clamp(v, -kLimit, kLimit)));
  };
  TaskResources b;
  b.cpu_millis = i64(static_cast<double>(hb.cpu_count) * 1000.0 * config.headroom_cpu - hb.load1 * 1000.0);
  const double mem_used = static_cast<double>(hb.mem_total_bytes) - static_cast<double>(hb.mem_available_bytes);
  b.mem_bytes = i64(static_cast<double>(hb.mem_total_bytes) * config.headroom_mem - mem_used);
  const double disk_used = static_cast<double>(hb.disk_total_bytes) - static_cast<double>(hb.disk_free_bytes);
  b.disk_bytes = i64(static_cast<double>(hb.disk_total_bytes) * config.headroom_disk - disk_used);
  return b;
}

ApiResult<TaskRecord> task_from_submission(const Json& body, std::int64_t now_ms) {
  if (!body.is_object()) return invalid("task", "expected a JSON object", "send {\"kind\", \"args\", ...}");
  static const std::set<std::string, std::less<>> kFields = {
      "kind", "args", "node", "selector", "capabilities", "min", "timeout_s", "max_attempts", "serial_key",
      "idempotency_key"};
  for (const auto& [key, value] : body.items()) {
    if (!kFields.contains(key)) return invalid(key.substr(0, 40), "unknown field", "see 'cairn-control task submit --help'");
  }
  auto field = [&](const char* key) -> const Json* {
    auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  };
  auto whole = [&](const char* key, std::int64_t lo, std::int64_t hi, std::int64_t& out) -> std::optional<ApiError> {
    const Json* v = field(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer() || v->get<std::int64_t>() < lo || v->get<std::int64_t>() > hi) {
      return invalid(key, "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi)).error();
    }
    out = v->get<std::int64_t>();
    return std::nullopt;
  };

  TaskRecord t;
  const Json* kind = field("kind");
  if (kind == nullptr || !kind->is_string()) return invalid("kind", "missing", "use one of exec, service.install, service.remove, inventory, reboot");
  t.kind = kind->get<std::string>();
  if (std::find(kKinds.begin(), kKinds.end(), t.kind) == kKinds.end()) {
    return refuse(400, "unknown_kind", "kind: '" + t.kind.substr(0, 40) + "' is not a task kind",
                  "use one of exec, service.install, service.remove, inventory, reboot");
  }
  Json args = Json::object();
  if (const Json* a = field("args")) args = *a;
  if (auto bad = check_args(t.kind, args)) return std::unexpected(std::move(*bad));
  t.args_json = dump_json(args);
  if (t.args_json.size() > kMaxArgsBytes) {
    return invalid_args(t.kind, "larger than " + std::to_string(kMaxArgsBytes) + " bytes", "ship big payloads as modules");
  }

  if (const Json* n = field("node")) {
    auto id = n->is_string() ? parse_uuid(n->get<std::string>()) : Result<Uuid>(fail(Errc::data, "not a string"));
    if (!id) return invalid("node", "not a node UUID", "see 'cairn-control node list'");
    t.node_id = id->str();
  }
  if (const Json* sel = field("selector")) {
    if (!sel->is_object() || sel->size() > kMaxSelectorEntries) {
      return invalid("selector", "must be an object of up to " + std::to_string(kMaxSelectorEntries) + " label=value strings");
    }
    for (const auto& [k, v] : sel->items()) {
      if (k.empty() || k.size() > 63 || !v.is_string() || v.get<std::string>().size() > 255) {
        return invalid("selector", "'" + k.substr(0, 63) + "' must be a label key of 1-63 characters with a string value");
      }
      t.selector[k] = v.get<std::string>();
    }
  }
  if (t.node_id && !t.selector.empty()) {
    return invalid("selector", "a task names a node or a selector, not both", "drop --node or --selector");
  }
  if (const Json* caps = field("capabilities")) {
    if (!caps->is_array() || caps->size() > kMaxCapabilities) return invalid("capabilities", "must be an array of strings");
    for (const auto& c : *caps) {
      if (!c.is_string() || !printable_key(c.get<std::string>(), 63)) {
        return invalid("capabilities", "each must be 1-63 printable characters without spaces");
      }
      t.capabilities.push_back(c.get<std::string>());
    }
  }
  if (const Json* min = field("min")) {
    if (!min->is_object()) return invalid("min", "must be {\"cpu_millis\", \"mem_bytes\", \"disk_bytes\"}");
    for (const auto& [k, v] : min->items()) {
      std::int64_t* slot = k == "cpu_millis" ? &t.min.cpu_millis
                           : k == "mem_bytes" ? &t.min.mem_bytes
                           : k == "disk_bytes" ? &t.min.disk_bytes
                                               : nullptr;
      if (slot == nullptr) return invalid("min." + k.substr(0, 40), "unknown resource", "use cpu_millis, mem_bytes, disk_bytes");
      // Capped so that sums of reservations can never overflow.
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > kMaxReservation) {
        return invalid("min." + k, "must be a whole number from 0 to 2^50");
      }
      *slot = v.get<std::int64_t>();
    }
  }
  if (auto bad = whole("timeout_s", 1, kMaxTimeoutS, t.timeout_s)) return std::unexpected(std::move(*bad));
  if (auto bad = whole("max_attempts", 1, kMaxAttempts, t.max_attempts)) return std::unexpected(std::move(*bad));
  for (const char* key : {"serial_key", "idempotency_key"}) {
    if (const Json* v = field(key)) {
      if (!v->is_string() || !printable_key(v->get<std::string>(), kMaxKeyBytes)) {
        return invalid(key, "must be 1-" + std::to_string(kMaxKeyBytes) + " printable characters without spaces");
      }
      (std::string_view(key) == "serial_key" ? t.serial_key : t.idempotency_key) = v->get<std::string>();
    }
  }
  t.id = random_uuid().str();
  t.created_at_ms = now_ms;
  t.updated_at_ms = now_ms;
  return t;
}

TaskQueue::TaskQueue(const ServiceConfig& config, const Clock& clock, Store& store, Random random, EventLog* events)
    : config_(config), clock_(clock), store_(store), random_(std::move(random)), events_(events) {
  if (!random_) {
    auto engine = std::make_shared<std::mt19937_64>(std::random_device{}());
    random_ = [engine] { return std::uniform_real_distribution<double>(0.0, 1.0)(*engine); };
  }
}

void TaskQueue::start() {
  thread_ = std::thread([this] {
    std::unique_lock lock(mutex_);
    while (!cv_.wait_for(lock, config_.task_sweep_period, [&] { return stopping_; })) {
      lock.unlock();
      sweep_once();
      lock.lock();
    }
  });
}

void TaskQueue::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::int64_t TaskQueue::now_ms() const { return to_unix_ms(clock_.now()); }

std::int64_t TaskQueue::backoff(std::int64_t attempt) {
  double unit = 0;
  {
    std::lock_guard lock(random_mutex_);
    unit = random_();
  }
  return retry_backoff_ms(attempt, config_.retry_base.count(), config_.retry_cap.count(), unit);
}

std::size_t TaskQueue::sweep_once() {
  std::lock_guard pass(sweep_mutex_);
  const std::int64_t now = now_ms();
  std::size_t expired_count = 0;
  auto expired = store_.expire_leases(now, [this](std::int64_t attempt) { return backoff(attempt); });
  if (!expired) {
    log::error("task.sweep_failed", {{"message", expired.error().message}});
  } else {
    expired_count = expired->size();
    expirations_ += static_cast<std::int64_t>(expired->size());
    for (const auto& t : *expired) {
      log::info("task.lease_expired", {{"task", t.id}, {"state", protocol::task_state_name(t.state)},
                                       {"attempts", t.attempts}});
      if (t.state == protocol::TaskState::dead) ++dead_;
      if (events_ == nullptr) continue;
      // The node that held it: a requeued task no longer names it; its last attempt does.
      std::string holder = t.leased_by.value_or("");
      if (holder.empty()) {
        if (auto attempts = store_.list_task_attempts(t.id); attempts && !attempts->empty()) {
          holder = attempts->back().node_id;
        }
      }
      if (holder.empty()) continue;
      const std::string attempt = std::to_string(t.attempts);
      const std::string state(protocol::task_state_name(t.state));
      events_->record(holder, "control.task.lease_expired." + t.id + "." + std::to_string(t.fence), "warning",
                      "task.lease_expired",
                      "task " + t.id + " (" + t.kind + ", attempt " + attempt + "): the lease of this node expired "
                      "before it completed; the task is " + state +
                          (t.state == protocol::TaskState::queued ? " again" : ""));
      if (t.state == protocol::TaskState::dead) {
        events_->record(holder, "control.task.dead." + t.id, "critical", "task.dead",
                        "task " + t.id + " (" + t.kind + ") is dead after " + attempt + " attempts: " + t.last_error);
      } else if (t.state == protocol::TaskState::cancelled) {
        events_->record(holder, "control.task.cancelled." + t.id, "warning", "task.cancelled",
                        "task " + t.id + " (" + t.kind + ") was cancelled while it ran here; its lease expired "
                        "before the node confirmed the stop");
      }
    }
    if (!expired->empty()) changed();
  }
  const auto mono = std::chrono::duration_cast<std::chrono::milliseconds>(clock_.monotonic().time_since_epoch()).count();
  if (!last_prune_mono_ms_ || mono - *last_prune_mono_ms_ >= std::chrono::milliseconds(kPrunePeriod).count()) {
    last_prune_mono_ms_ = mono;
    const std::int64_t older_than = now - std::chrono::duration_cast<std::chrono::milliseconds>(config_.task_history).count();
    auto pruned = store_.prune_tasks(older_than, config_.task_history_per_node);
    if (!pruned) {
      log::error("task.prune_failed", {{"message", pruned.error().message}});
    } else if (*pruned > 0) {
      log::info("task.pruned", {{"count", *pruned}});
    }
  }
  return expired_count;
}

void TaskQueue::count_completion(const std::string& outcome) {
  std::lock_guard lock(metrics_mutex_);
  ++completions_[outcome];
}

void TaskQueue::record_lease_latency(std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  std::size_t bucket = 0;
  while (bucket < kTaskLeaseBuckets.size() && seconds > kTaskLeaseBuckets[bucket]) ++bucket;
  std::lock_guard lock(metrics_mutex_);
  ++lease_buckets_[bucket];
  lease_sum_s_ += seconds;
  ++lease_count_;
}

// Once per completion that changed the task (a repeat answers ok but is not counted again).
void TaskQueue::completed(const TaskCompletion& c, protocol::TaskState state) {
  using protocol::TaskState;
  std::string outcome = c.outcome;
  if (c.outcome == "failed") outcome = std::string(protocol::failure_reason_name(c.reason.value_or(protocol::FailureReason::internal)));
  count_completion(outcome);
  if (state == TaskState::dead) ++dead_;
  if (events_ == nullptr) return;
  if (state == TaskState::dead) {
    events_->record(c.node_id, "control.task.dead." + c.task_id, "critical", "task.dead",
                    "task " + c.task_id + " is dead: attempt " + std::to_string(c.fence) + " failed (" + outcome +
                        ") and it had no attempts left" + (c.error.empty() ? "" : ": " + c.error.substr(0, 512)));
  } else if (state == TaskState::cancelled) {
    events_->record(c.node_id, "control.task.cancelled." + c.task_id, "warning", "task.cancelled",
                    "task " + c.task_id + " was cancelled by an operator while it ran here (attempt " +
                        std::to_string(c.fence) + "); the node stopped it");
  }
}

TaskMetrics TaskQueue::metrics() {
  TaskMetrics m;
  const auto mono = std::chrono::duration_cast<std::chrono::milliseconds>(clock_.monotonic().time_since_epoch()).count();
  bool read = false;
  {
    std::lock_guard lock(metrics_mutex_);
    read = !counts_read_mono_ms_ ||
           mono - *counts_read_mono_ms_ >= std::chrono::duration_cast<std::chrono::milliseconds>(kCountsMaxAge).count();
  }
  if (read) {
    auto counts = store_.count_tasks();
    std::lock_guard lock(metrics_mutex_);
    counts_read_mono_ms_ = mono;
    if (counts) {
      counts_ = std::move(*counts);
    } else {
      log::error("task.count_failed", {{"message", counts.error().message}});
      counts_.clear();
    }
  }
  std::lock_guard lock(metrics_mutex_);
  m.by_state = counts_;
  m.lease_requests = lease_requests_.load();
  m.leased = leased_.load();
  m.completions = completions_;
  m.expirations = expirations_.load();
  m.dead = dead_.load();
  m.lease_latency_buckets = lease_buckets_;
  m.lease_latency_sum_s = lease_sum_s_;
  m.lease_latency_count = lease_count_;
  return m;
}

void TaskQueue::refresh_node(const std::string& node_id, NodeInfo& info, std::int64_t now) {
  const auto ttl = std::chrono::duration_cast<std::chrono::milliseconds>(kNodeInfoTtl).count();
  if (info.labels_read_ms != 0 && now - info.labels_read_ms < ttl) return;
  auto node = store_.find_node(node_id);
  if (!node || !*node) return;  // placement then sees no labels: only unselective tasks
  info.labels = (*node)->labels;
  info.labels_read_ms = now;
  if ((*node)->status && (*node)->status->last_seen_ms > info.last_seen_ms) {
    // Another replica (or a previous run) stored a newer heartbeat.
    info.last = (*node)->status->last;
    info.last.events.clear();
    info.last_seen_ms = (*node)->status->last_seen_ms;
    info.have_heartbeat = true;
  }
}

Result<LeaseQuery> TaskQueue::lease_query(const std::string& node_id) {
  const std::int64_t now = now_ms();
  LeaseQuery q;
  q.node_id = node_id;
  q.now_ms = now;
  std::lock_guard lock(nodes_mutex_);
  NodeInfo& info = nodes_[node_id];
  refresh_node(node_id, info, now);
  q.labels = info.labels;
  if (info.have_heartbeat) {
    q.capabilities = info.last.capabilities;
    q.budget = node_budget(info.last, config_);
  }
  return q;
}

ApiResult<protocol::LeaseResponse> TaskQueue::lease(const AuthorizedNode& node, const protocol::LeaseRequest& request) {
  if (request.max_tasks < 0 || request.max_tasks > static_cast<std::int64_t>(protocol::kMaxLeaseBatch)) {
    return invalid("max_tasks", "must be 0 to " + std::to_string(protocol::kMaxLeaseBatch));
  }
  if (request.running.size() > kMaxRunningListed) {
    return invalid("running", "lists more than " + std::to_string(kMaxRunningListed) + " tasks");
  }
  protocol::LeaseResponse out;
  if (!request.running.empty()) {
    auto cancelled = store_.cancelled_among(node.node_id(), request.running);
    if (!cancelled) return store_failure(cancelled.error());
    out.cancel = std::move(*cancelled);
  }
  if (request.max_tasks == 0) return out;
  auto q = lease_query(node.node_id());
  if (!q) return store_failure(q.error());
  const std::int64_t lease_s = std::clamp<std::int64_t>(request.lease_s, config_.min_lease.count(), config_.max_lease.count());
  q->max_tasks = request.max_tasks;
  q->lease_ms = lease_s * 1000;
  const auto started = clock_.monotonic();
  auto leased = store_.lease_tasks(*q);
  record_lease_latency(clock_.monotonic() - started);
  if (!leased) return store_failure(leased.error());
  ++lease_requests_;
  leased_ += static_cast<std::int64_t>(leased->size());
  for (auto& t : *leased) {
    protocol::LeasedTask lt;
    lt.id = t.id;
    lt.kind = t.kind;
    auto args = parse_json(t.args_json, "stored task args");
    lt.args = args ? std::move(*args) : Json::object();
    lt.fence = t.fence;
    lt.attempt = t.attempts;
    lt.timeout_s = t.timeout_s;
    lt.lease_s = lease_s;
    log::info("task.leased", {{"task", t.id}, {"node", node.node_id()}, {"fence", t.fence}, {"attempt", t.attempts}});
    out.tasks.push_back(std::move(lt));
  }
  if (!out.tasks.empty()) changed();
  return out;
}

ApiResult<protocol::ExtendResponse> TaskQueue::extend(const AuthorizedNode& node, std::string_view task_id,
                                                      const protocol::ExtendRequest& request) {
  const std::int64_t lease_s = std::clamp<std::int64_t>(request.lease_s, config_.min_lease.count(), config_.max_lease.count());
  auto out = store_.extend_lease(task_id, node.node_id(), request.fence, lease_s * 1000, now_ms(), request.running);
  if (!out) return store_failure(out.error());
  if (out->check != FenceCheck::ok) {
    log::info("task.extend_refused", {{"task", std::string(task_id.substr(0, 64))}, {"node", node.node_id()},
                                      {"fence", request.fence}});
    return fence_refusal(out->check, task_id, request.fence, "extend");
  }
  return protocol::ExtendResponse{lease_s, out->cancel_requested};
}

ApiResult<TaskCompletion> TaskQueue::completion_of(const AuthorizedNode& node, std::string_view task_id,
                                                   const protocol::CompleteRequest& request, std::int64_t now) {
  if (request.outcome != "succeeded" && request.outcome != "failed" && request.outcome != "cancelled") {
    return invalid("outcome", "'" + request.outcome.substr(0, 40) + "' is not succeeded, failed or cancelled");
  }
  if (request.outcome == "failed" && !request.reason) {
    return invalid("reason", "a failed task needs a reason",
                   "one of timeout, exit_nonzero, killed, lease_lost, invalid_args, node_unavailable, internal");
  }
  TaskCompletion c;
  c.task_id = std::string(task_id);
  c.node_id = node.node_id();
  c.fence = request.fence;
  c.now_ms = now;
  c.outcome = request.outcome;
  c.reason = request.reason;
  c.exit_code = request.exit_code;
  c.error = request.error;
  if (c.error.size() > kMaxErrorBytes) c.error.resize(kMaxErrorBytes);
  c.output = request.output;
  c.output_truncated = request.output_truncated || request.output.size() > protocol::kMaxTaskOutputBytes;
  keep_tail(c.output, protocol::kMaxTaskOutputBytes);
  c.output_bytes = std::max<std::int64_t>(request.output_bytes, static_cast<std::int64_t>(request.output.size()));
  // Each lease adds one to both the fence and the attempt count, so the fence is the attempt.
  c.retry_not_before_ms = c.now_ms + backoff(request.fence);
  return c;
}

ApiResult<protocol::CompleteResponse> TaskQueue::complete(const AuthorizedNode& node, std::string_view task_id,
                                                          const protocol::CompleteRequest& request) {
  auto checked = completion_of(node, task_id, request, now_ms());
  if (!checked) return std::unexpected(checked.error());
  const TaskCompletion& c = *checked;
  auto out = store_.complete_task(c);
  if (!out) return store_failure(out.error());
  if (out->check != FenceCheck::ok) {
    log::info("task.complete_refused", {{"task", c.task_id.substr(0, 64)}, {"node", c.node_id}, {"fence", c.fence}});
    return fence_refusal(out->check, task_id, request.fence, "complete");
  }
  log::info("task.completed", {{"task", c.task_id}, {"node", c.node_id}, {"outcome", c.outcome},
                               {"state", protocol::task_state_name(out->state)}});
  if (!out->repeat) completed(c, out->state);
  changed();
  return protocol::CompleteResponse{std::string(protocol::task_state_name(out->state))};
}

ApiResult<protocol::CompleteBatchResponse> TaskQueue::complete_batch(const AuthorizedNode& node,
                                                                     const protocol::CompleteBatchRequest& request) {
  if (request.completions.size() > protocol::kMaxCompleteBatch) {
    return invalid("completions", "more than " + std::to_string(protocol::kMaxCompleteBatch) + " in one batch",
                   "send smaller batches");
  }
  const std::int64_t now = now_ms();
  protocol::CompleteBatchResponse out;
  out.results.resize(request.completions.size());
  std::vector<TaskCompletion> batch;
  std::vector<std::size_t> index;  // batch position -> request position
  for (std::size_t i = 0; i < request.completions.size(); ++i) {
    const auto& item = request.completions[i];
    auto& result = out.results[i];
    result.id = item.id.substr(0, 64);
    auto checked = completion_of(node, item.id, item.request, now);
    if (!checked) {
      result.status = checked.error().http_status;
      result.code = checked.error().body.code;
      result.message = checked.error().body.message;
      result.hint = checked.error().body.hint;
      continue;
    }
    batch.push_back(std::move(*checked));
    index.push_back(i);
  }
  if (batch.empty()) return out;
  auto stored = store_.complete_tasks(batch);
  if (!stored) return store_failure(stored.error());
  bool any = false;
  for (std::size_t k = 0; k < batch.size(); ++k) {
    const TaskCompletion& c = batch[k];
    const CompleteOutcome& o = (*stored)[k];
    auto& result = out.results[index[k]];
    if (o.check != FenceCheck::ok) {
      log::info("task.complete_refused", {{"task", c.task_id.substr(0, 64)}, {"node", c.node_id}, {"fence", c.fence}});
      const ApiError e = fence_refusal(o.check, c.task_id, c.fence, "complete").error();
      result.status = e.http_status;
      result.code = e.body.code;
      result.message = e.body.message;
      result.hint = e.body.hint;
      continue;
    }
    any = true;
    log::info("task.completed", {{"task", c.task_id}, {"node", c.node_id}, {"outcome", c.outcome},
                                 {"state", protocol::task_state_name(o.state)}});
    if (!o.repeat) completed(c, o.state);
    result.state = std::string(protocol::task_state_name(o.state));
  }
  if (any) changed();
  return out;
}

ApiResult<Json> TaskQueue::submit_batch(const Json& body) {
  auto items = body.find("tasks");
  if (items == body.end() || !items->is_array()) {
    return invalid("tasks", "expected an array of task submissions", R"(e.g. {"tasks": [{"kind": "exec", ...}]})");
  }
  if (items->size() > kMaxSubmitBatch) {
    return invalid("tasks", std::to_string(items->size()) + " in one batch, over the cap of " +
                                std::to_string(kMaxSubmitBatch), "split the file into smaller batches");
  }
  const std::int64_t now = now_ms();
  std::vector<TaskRecord> records;
  records.reserve(items->size());
  for (std::size_t i = 0; i < items->size(); ++i) {
    const Json& item = (*items)[i];
    if (!item.is_object()) return invalid("tasks[" + std::to_string(i) + "]", "expected a JSON object");
    auto task = task_from_submission(item, now);
    if (!task) {
      ApiError e = task.error();
      e.body.message = "tasks[" + std::to_string(i) + "]: " + e.body.message;
      return std::unexpected(std::move(e));
    }
    records.push_back(std::move(*task));
  }
  Json list = Json::array();
  if (records.empty()) return Json{{"tasks", std::move(list)}, {"created", 0}};
  auto out = store_.submit_tasks(records);
  if (!out) return store_failure(out.error());
  std::int64_t created = 0;
  for (const auto& o : *out) {
    if (o.created) {
      ++created;
      log::info("task.submitted", {{"task", o.task.id}, {"kind", o.task.kind}});
    }
    Json j = task_json(o.task, false);
    j["created"] = o.created;
    list.push_back(std::move(j));
  }
  if (created > 0) changed();
  return Json{{"tasks", std::move(list)}, {"created", created}};
}

ApiResult<Json> TaskQueue::submit(const Json& body) {
  auto task = task_from_submission(body, now_ms());
  if (!task) return std::unexpected(task.error());
  auto out = store_.submit_task(*task);
  if (!out) return store_failure(out.error());
  if (out->created) {
    log::info("task.submitted", {{"task", out->task.id}, {"kind", out->task.kind}});
    changed();
  }
  Json j = task_json(out->task, false);
  j["created"] = out->created;
  return j;
}

ApiResult<Json> TaskQueue::list(const TaskFilter& filter) {
  TaskQuery q;
  if (filter.state) {
    q.state = protocol::task_state_from(*filter.state);
    if (!q.state) {
      return invalid("state", "'" + filter.state->substr(0, 40) + "' is not a task state",
                     "use queued, leased, running, succeeded, failed, dead or cancelled");
    }
  }
  if (filter.node_id) {
    auto id = parse_uuid(*filter.node_id);
    if (!id) return invalid("node", "not a UUID ('" + filter.node_id->substr(0, 64) + "')");
    q.node_id = id->str();
  }
  q.limit = std::clamp<std::int64_t>(filter.limit, 1, kMaxTasksListed);
  auto tasks = store_.list_tasks(q);
  if (!tasks) return store_failure(tasks.error());
  Json list = Json::array();
  for (const auto& t : *tasks) list.push_back(task_json(t, false));
  return Json{{"tasks", std::move(list)}};
}

ApiResult<Json> TaskQueue::show(std::string_view id) {
  auto task = store_.find_task(id);
  if (!task) return store_failure(task.error());
  if (!*task) {
    return refuse(404, "task_not_found", "no task with id '" + std::string(id.substr(0, 64)) + "'",
                  "list tasks with 'cairn-control task list'; finished tasks are pruned after the history period");
  }
  auto attempts = store_.list_task_attempts(id);
  if (!attempts) return store_failure(attempts.error());
  Json j = task_json(**task, true);
  Json list = Json::array();
  for (const auto& a : *attempts) list.push_back(attempt_json(a));
  j["attempts"] = std::move(list);
  return j;
}

ApiResult<Json> TaskQueue::cancel(std::string_view id) {
  auto out = store_.cancel_task(id, now_ms());
  if (!out) return store_failure(out.error());
  const std::string tid(id.substr(0, 64));
  switch (*out) {
    case CancelOutcome::not_found:
      return refuse(404, "task_not_found", "no task with id '" + tid + "'", "list tasks with 'cairn-control task list'");
    case CancelOutcome::already_final: break;
    case CancelOutcome::cancelled:
      log::info("task.cancelled", {{"task", tid}});
      changed();
      break;
    case CancelOutcome::stop_requested: log::info("task.cancel_requested", {{"task", tid}}); break;
  }
  auto task = store_.find_task(id);
  if (!task) return store_failure(task.error());
  const std::string state = *task ? std::string(protocol::task_state_name((**task).state)) : "unknown";
  const char* outcome = *out == CancelOutcome::already_final ? "already_final"
                        : *out == CancelOutcome::cancelled   ? "cancelled"
                                                             : "stop_requested";
  return Json{{"id", tid}, {"state", state}, {"outcome", outcome}};
}

std::shared_ptr<const TaskQueue::QueuedIndex> TaskQueue::queued_index() {
  std::lock_guard lock(index_mutex_);
  const auto mono = std::chrono::duration_cast<std::chrono::milliseconds>(clock_.monotonic().time_since_epoch()).count();
  if (index_ && !index_dirty_.load() && mono - index_->built_mono_ms < kIndexRefresh.count()) return index_;
  if (index_ && mono - index_->built_mono_ms < kIndexMinAge.count()) return index_;  // at most 20 rebuilds a second
  index_dirty_.store(false);
  auto heads = store_.queued_heads(kIndexSize);
  auto fresh = std::make_shared<QueuedIndex>();
  fresh->built_mono_ms = mono;
  if (heads) {
    for (auto& t : *heads) {
      if (!t.selector.empty()) fresh->any_selector = true;
      if (t.node_id) {
        fresh->addressed[*t.node_id].push_back(std::move(t));
      } else {
        fresh->unaddressed.push_back(std::move(t));
      }
    }
  } else {
    log::error("task.index_failed", {{"message", heads.error().message}});
  }
  index_ = std::move(fresh);
  return index_;
}

bool TaskQueue::index_has_work(const QueuedIndex& index, const std::string& node_id, const NodeInfo& info,
                               std::int64_t now) const {
  const TaskResources budget = info.have_heartbeat ? node_budget(info.last, config_) : TaskResources{};
  auto fits = [&](const TaskRecord& t) {
    if (t.not_before_ms > now) return false;
    if (t.min.cpu_millis > budget.cpu_millis || t.min.mem_bytes > budget.mem_bytes ||
        t.min.disk_bytes > budget.disk_bytes) {
      return false;
    }
    for (const auto& [k, v] : t.selector) {
      auto it = info.labels.find(k);
      if (it == info.labels.end() || it->second != v) return false;
    }
    for (const auto& c : t.capabilities) {
      if (std::find(info.last.capabilities.begin(), info.last.capabilities.end(), c) == info.last.capabilities.end()) {
        return false;
      }
    }
    return true;
  };
  if (auto it = index.addressed.find(node_id); it != index.addressed.end()) {
    if (std::any_of(it->second.begin(), it->second.end(), fits)) return true;
  }
  const std::size_t n = std::min(index.unaddressed.size(), kIndexScan);
  return std::any_of(index.unaddressed.begin(), index.unaddressed.begin() + static_cast<std::ptrdiff_t>(n), fits);
}

void TaskQueue::annotate_heartbeat(const std::string& node_id, const protocol::HeartbeatRequest& request,
                                   std::int64_t received_at_ms, protocol::HeartbeatResponse& reply) {
  auto index = queued_index();
  {
    std::lock_guard lock(nodes_mutex_);
    NodeInfo& info = nodes_[node_id];
    info.last = request;
    info.last.events.clear();
    info.last.running_tasks.clear();
    info.last_seen_ms = received_at_ms;
    info.have_heartbeat = true;
    // Labels matter only to selectors: no store read while no queued task has one.
    if (index->any_selector) refresh_node(node_id, info, received_at_ms);
    reply.work_waiting = index_has_work(*index, node_id, info, received_at_ms);
  }
  if (!request.running_tasks.empty()) {
    std::span<const std::string> running(request.running_tasks);
    if (running.size() > kMaxRunningListed) running = running.first(kMaxRunningListed);
    auto cancelled = store_.cancelled_among(node_id, running);
    if (cancelled) {
      reply.cancel_tasks = std::move(*cancelled);
    } else {
      log::error("task.cancel_lookup_failed", {{"node", node_id}, {"message", cancelled.error().message}});
    }
  }
}

}  // namespace cairn::control
