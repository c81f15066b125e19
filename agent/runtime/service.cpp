#include "agent/runtime/service.hpp"

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <optional>

#include "agent/enroll/credentials.hpp"
#include "agent/events/buffer.hpp"
#include "agent/tasks/inventory.hpp"
#include "agent/tasks/runner.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/modules/attachments.hpp"
#include "agent/persist/runtime.hpp"  // persist (issue 15, h-escrow): the boot's pending event
#include "agent/boot/bootstrap.hpp"  // modules (h-apply): a sealed base defers the union's changes
#include "agent/runtime/status_file.hpp"
#include "agent/runtime/system_stats.hpp"
#include "agent/transport/control_client.hpp"
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// sd_notify is a no-op outside systemd (NOTIFY_SOCKET unset), so it is always safe to call.
void notify(const std::string& state) { sd_notify(0, state.c_str()); }

// With WatchdogSec= set, systemd expects WATCHDOG=1 at least every WATCHDOG_USEC; the loop
// wakes at half that to stay clear of it (sd_watchdog_enabled(3)).
std::optional<milliseconds> watchdog_period() {
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  return milliseconds(std::max<std::uint64_t>(1, usec / 2000));
}

// The event tells the operator why; the full error is in the agent's log.
constexpr std::size_t kMaxErrorInEvent = 400;

// Tasks (issue 13): the lease asked for, how often the loop looks at its running tasks (to
// lease again at once when one ends while work waits), and the event batches sent per turn.
constexpr std::int64_t kLeaseSeconds = 60;
constexpr milliseconds kTaskCheck{1000};
constexpr std::size_t kEventBatchesPerTurn = 4;

// A task thread's own connection to control (ControlClient is one connection, not shared).
class ControlTaskChannel final : public tasks::TaskChannel {
 public:
  explicit ControlTaskChannel(ControlClient client) : client_(std::move(client)) {}
  Result<protocol::ExtendResponse> extend(const std::string& id, const protocol::ExtendRequest& r) override {
    return client_.extend(id, r);
  }
  Result<protocol::CompleteResponse> complete(const std::string& id, const protocol::CompleteRequest& r) override {
    return client_.complete(id, r);
  }
  Result<protocol::CompleteBatchResponse> complete_batch(const protocol::CompleteBatchRequest& batch) override {
    return client_.complete_batch(batch);  // tasks (h-taskbatch)
  }

 private:
  ControlClient client_;
};

class Loop {
 public:
  Loop(const AgentConfig& config, const ServiceOptions& options, const Clock& clock,
       const std::function<double()>& random01, StopSignal& stop, const HttpClientFactory& make_http)
      : config_(config), options_(options), clock_(clock), random01_(random01), stop_(stop), make_http_(make_http),
        store_(config.state_dir()), watchdog_(watchdog_period()) {}

  Status run() {
    if (auto ok = load_credentials(); !ok) return ok;
    auto buffer = events::EventBuffer::open(config_.state_dir() / "events", clock_);
    if (!buffer) return fail(buffer.error());
    events_ = std::move(*buffer);
    // persist (issue 15, h-escrow): the critical event a boot kept on tmpfs goes out with the others.
    if (auto kept = events::append_external_event(*events_, persist::pending_event_path(config_.root)); !kept) {
      log::warn("events.external_failed", {{"error", kept.error().message}});
    }
    tasks::KindSettings kinds{.exec_allowlist = config_.exec_allowlist,
                              .allow_root_services = config_.allow_root_services,
                              .services_dir = config_.services_dir};
    runner_.emplace(kinds, tasks::RunnerOptions{.max_concurrent = config_.max_concurrent_tasks}, config_.root, clock_,
                    [this] { return task_channel(); }, events_.get());
    slim_inventory();
    setup_reconciler();  // modules (h-apply)
    event("info", "service.started", "cairn-agent " CAIRN_VERSION " started; certificate serial " + creds_->cert.serial_hex);
    log::info("service.start", {{"node", node_id_}, {"control", control_url_},
                                {"cert_not_after", format_rfc3339(creds_->cert.not_after)}});
    if (clock_.now() >= creds_->cert.not_after) {
      // Control will refuse every request; keep trying (this node's clock may be the one that
      // is wrong), but say at once what the operator has to do.
      log::critical("cert.expired", {{"node", node_id_}, {"not_after", format_rfc3339(creds_->cert.not_after)},
                                     {"hint", reenrollment_hint(node_id_)}});
    }
    resume_status();
    while (!stop_.poll()) {
      maybe_rotate();
      if (stop_.poll()) break;  // SIGTERM during a rotation: no more requests
      const milliseconds next = beat();
      if (!ready_sent_) {
        notify("READY=1");
        ready_sent_ = true;
      }
      if (sleep(next)) break;
    }
    notify("STOPPING=1");
    // modules (h-apply): an update in flight gives up at its next step (nothing half-mounted);
    // it winds down while the tasks drain, within the same stop timeout.
    if (reconciler_) reconciler_->request_stop();
    const auto stop_deadline = clock_.monotonic() + config_.task_stop_timeout;
    // SIGTERM: no more leases; running tasks get the stop timeout to finish, then are stopped
    // and reported failed/killed (control queues them again); then the events go out.
    const auto running = runner_->running_count();
    if (running > 0) {
      log::info("service.draining", {{"tasks", running}, {"timeout_s", config_.task_stop_timeout.count()}});
      notify("STATUS=stopping: waiting for " + std::to_string(running) + " task(s)");
    }
    runner_->drain(stop_deadline);
    if (reconciler_) {  // modules (h-apply)
      if (reconciler_->wait(stop_deadline)) {
        drain_module_events();
      } else {
        log::warn("modules.apply_left_running", {{"timeout_s", config_.task_stop_timeout.count()},
                                                 {"note", "a registry request did not end in time; the exit ends it"}});
        reconciler_->abandon();
      }
    }
    event("info", "service.stopped", "cairn-agent stopped (SIGTERM)");
    flush_events();
    log::info("service.stop", {{"node", node_id_}});
    return {};
  }

 private:
  Status load_credentials() {
    auto loaded = store_.load();
    if (!loaded) return fail(loaded.error());
    if (!*loaded) {
      return fail(Errc::config, "not enrolled: no credentials under " + store_.current().dir.string(),
                  "run `cairn-agent enroll` first");
    }
    creds_ = std::move(**loaded);
    node_id_ = creds_->cert.subject_cn;
    if (control_url_.empty()) {
      auto url = enrolled_control_url(config_);
      if (!url) return fail(url.error());
      control_url_ = *url;
    }
    auto tls = control_tls(config_, creds_);
    if (!tls) return fail(tls.error());
    {
      std::lock_guard l(tls_mutex_);
      task_tls_ = *tls;
    }
    client_.emplace(control_url_, make_http_(*tls));
    rotate_at_ = rotation_time(options_, creds_->cert.not_before, creds_->cert.not_after, random01_());
    status_.node_id = node_id_;
    status_.cert_serial = creds_->cert.serial_hex;
    return {};
  }

  // What a previous run of the service saw goes on: the count of acknowledged heartbeats, and
  // a rotation failure episode about the certificate still installed (same event id).
  void resume_status() {
    auto previous = read_status(config_.state_dir());
    if (!previous || !*previous || (*previous)->node_id != node_id_) {
      // The first run of the service as this node: its enrollment becomes an event (the
      // enroll command itself may run in the initramfs, before the persist volume is this one).
      event("info", "node.enrolled", "node " + node_id_ + " enrolled; certificate serial " + creds_->cert.serial_hex +
                                         " valid until " + format_rfc3339(creds_->cert.not_after));
      return;
    }
    const auto& p = **previous;
    status_.heartbeats_acked = p.heartbeats_acked;
    if (p.cert_serial == creds_->cert.serial_hex && p.rotation_failures > 0) {
      rotation_failures_ = p.rotation_failures;
      status_.rotation_failures = p.rotation_failures;
      status_.rotation_failing_event_id = p.rotation_failing_event_id;
    }
  }

  // Control issues a certificate, then the node installs it. A set issued but not installed is
  // kept (in memory) and its installation retried, without asking control again: control lets
  // only the newest certificate rotate, and that one is the set waiting here.
  Result<CertInfo> rotate() {
    if (pending_ && clock_.now() >= pending_->info.not_after) pending_.reset();  // too late to use
    if (!pending_) {
      auto issued = request_rotation(*client_, node_id_, creds_->ca_pem, clock_);
      if (!issued) return fail(issued.error());
      pending_ = std::move(*issued);
    }
    if (auto ok = store_.install(pending_->creds); !ok) {
      return fail(ok.error().with_context("rotate: install the certificate control issued (serial " +
                                          pending_->info.serial_hex + ")"));
    }
    auto info = pending_->info;
    pending_.reset();
    return info;
  }

  void maybe_rotate() {
    if (clock_.now() < rotate_at_) return;
    auto rotated = rotate();
    if (!rotated) {
      // Whatever the cause (control refused, unreachable, or the new set could not be stored
      // on the persist volume) the node is still on its old certificate: it counts, and the
      // current set stays in use until a later turn of the loop succeeds.
      ++rotation_failures_;
      status_.rotation_failures = rotation_failures_;
      if (rotation_failures_ >= options_.rotation_alert_after && status_.rotation_failing_event_id.empty()) {
        // One id for the whole episode: control keeps one event, however many heartbeats carry it.
        status_.rotation_failing_event_id = "cert.rotation_failing-" + random_hex(8);
      }
      last_rotation_error_ = rotated.error().message;
      event(rotation_failures_ >= options_.rotation_alert_after ? "critical" : "warning", "cert.rotate_failed",
            "certificate rotation failed (" + std::to_string(rotation_failures_) + " in a row): " +
                rotated.error().message.substr(0, kMaxErrorInEvent));
      log::error("cert.rotate_failed", {{"node", node_id_}, {"failures", rotation_failures_},
                                        {"error", rotated.error().message},
                                        {"cert_not_after", format_rfc3339(creds_->cert.not_after)}});
      return;
    }
    log::info("cert.rotated", {{"node", node_id_}, {"old_serial", creds_->cert.serial_hex},
                               {"serial", rotated->serial_hex}, {"not_after", format_rfc3339(rotated->not_after)}});
    event("info", "cert.rotated", "certificate rotated: serial " + creds_->cert.serial_hex + " -> " + rotated->serial_hex +
                                      ", valid until " + format_rfc3339(rotated->not_after));
    rotation_failures_ = 0;
    status_.rotation_failures = 0;
    status_.rotation_failing_event_id.clear();  // the episode is over; a new one gets a new id
    last_rotation_error_.clear();
    if (auto ok = load_credentials(); !ok) {
      log::error("cert.reload_failed", {{"error", ok.error().message}});
    }
  }

  protocol::HeartbeatRequest build_heartbeat() {
    protocol::HeartbeatRequest hb;
    collect_system_stats(config_.root, config_.persist_dir, hb);
    hb.agent_version = CAIRN_VERSION;
    hb.mount_state = "none";  // modules arrive with the modules issue
    hb.modules = modules::running_modules(config_);  // modules (issue 14): the running digests
    const bool all_mounted = std::all_of(hb.modules.begin(), hb.modules.end(), [](const auto& m) { return m.mounted; });
    if (!hb.modules.empty()) hb.mount_state = all_mounted ? "mounted" : "degraded";
    hb.cert_not_after = format_rfc3339(creds_->cert.not_after);
    hb.labels = config_.labels;
    hb.capabilities = capabilities();
    hb.running_tasks = runner_->running_ids();
    if (!status_.rotation_failing_event_id.empty()) {
      // Sent on every heartbeat while it lasts, under the episode's id.
      const std::string cause = last_rotation_error_.empty() ? "" : "; last error: " + last_rotation_error_.substr(0, kMaxErrorInEvent);
      hb.events.push_back({status_.rotation_failing_event_id, "critical", "cert.rotation_failing",
                           "certificate rotation failed " + std::to_string(rotation_failures_) +
                               " times in a row; certificate expires " + hb.cert_not_after + cause,
                           format_rfc3339(clock_.now())});
    }
    return hb;
  }

  // One heartbeat; returns how long to wait before the next.
  milliseconds beat() {
    const auto hb = build_heartbeat();
    const auto started = clock_.monotonic();
    auto answer = client_->heartbeat(hb);
    const auto took = duration_cast<milliseconds>(clock_.monotonic() - started);
    status_.last_attempt = clock_.now();
    if (answer) {
      if (failures_ > 0) log::info("heartbeat.recovered", {{"node", node_id_}, {"after_failures", failures_}});
      failures_ = 0;
      ++status_.heartbeats_acked;
      status_.last_ok = status_.last_attempt;
      status_.last_error.clear();
      status_.server_time = answer->server_time;
      status_.next_interval_s = std::clamp<std::int64_t>(answer->next_interval_s, 1, 3600);
      status_.consecutive_failures = 0;
      write_status(config_.state_dir(), status_);
      const auto receipt = modules::receive_policy(config_, answer->module_policy, format_rfc3339(clock_.now()));  // modules (h-modpolicy)
      if (!receipt && receipt.error().message != last_policy_error_) {  // once per distinct error, not every heartbeat
        last_policy_error_ = receipt.error().message;
        log::warn("modules.policy_not_taken", {{"error", last_policy_error_}});
      }
      if (auto saved = modules::save_desired(config_, answer->desired_modules); !saved) {  // for `cairn-agent update`
        log::warn("modules.desired_not_saved", {{"error", saved.error().message}});
      }
      if (reconciler_) {  // modules (h-apply): a new set starts on the worker, the heartbeat goes on
        on_modules(reconciler_->offer({answer->desired_modules, accepted_policy_version(receipt)}));
      }
      drain_module_events();  // modules (h-modctl): events `cairn-agent attach/update` left for the service
      log::debug("heartbeat.ok", {{"node", node_id_}, {"ms", took.count()}, {"acked", status_.heartbeats_acked}});
      notify("STATUS=heartbeat ok at " + format_rfc3339(*status_.last_ok));
      for (const auto& id : answer->cancel_tasks) runner_->cancel(id);
      work_waiting_ = answer->work_waiting;
      lease();
      flush_events();
      return std::chrono::seconds(status_.next_interval_s);
    }
    ++failures_;
    status_.consecutive_failures = failures_;
    status_.last_error = answer.error().message;
    write_status(config_.state_dir(), status_);
    const auto delay = backoff_delay(options_, failures_, random01_());
    const auto level = answer.error().code == Errc::refused ? log::Level::critical : log::Level::warning;
    log::event(level, "heartbeat.failed", {{"node", node_id_}, {"failures", failures_},
                                           {"retry_in_ms", delay.count()}, {"error", answer.error().message}});
    if (failures_ == 1) {  // one event per episode; the log has every attempt
      event("warning", "heartbeat.failed", "heartbeat failed: " + answer.error().message.substr(0, kMaxErrorInEvent));
    }
    notify("STATUS=heartbeat failing (" + std::to_string(failures_) + "): " + answer.error().message);
    return delay;
  }

  // Sleeps `total` on the clock, waking for the watchdog; true when asked to stop.
  bool sleep(milliseconds total) {
    const auto end = clock_.monotonic() + total;
    for (;;) {
      notify("WATCHDOG=1");
      const auto now = clock_.monotonic();
      if (now >= end) return stop_.poll();
      auto wake = watchdog_ ? std::min<Clock::MonoTime>(end, now + *watchdog_) : end;
      // While tasks run, look at them every second: a slot that frees while control has
      // work waiting is filled at once, not at the next heartbeat.
      if (runner_->running_count() > 0) wake = std::min<Clock::MonoTime>(wake, now + kTaskCheck);
      // modules (h-apply): an update on the worker is looked at as often; a held retry on time.
      if (reconciler_ && reconciler_->busy()) wake = std::min<Clock::MonoTime>(wake, now + kTaskCheck);
      if (auto retry = reconciler_ ? reconciler_->retry_at() : std::nullopt) wake = std::min(wake, std::max(now, *retry));
      if (stop_.wait_until(clock_, wake)) return true;
      if (reconciler_) on_modules(reconciler_->tick());
      if (runner_->reap() > 0) {
        if (work_waiting_) lease();
        flush_events();
      }
    }
  }

  // Event buffer: an event that cannot be stored is logged (the log is the last resort).
  void event(std::string_view severity, std::string_view kind, const std::string& message) {
    if (!events_) return;
    if (auto ok = events_->append(severity, kind, message); !ok) {
      log::error("events.append_failed", {{"kind", kind}, {"error", ok.error().message}});
    }
  }

  // modules (h-modctl): into the durable buffer, delivered by the flush that follows.
  void drain_module_events() {
    auto drained = modules::drain_events(config_, [this](const protocol::Event& e) -> Status {
      if (auto ok = events_->append(e); !ok) return fail(ok.error());
      return {};
    });
    if (!drained) log::warn("modules.events_drain_failed", {{"error", drained.error().message}});
  }

  // modules (h-apply): the reconciler, unless the operator keeps manual control, no registry is
  // configured, or the union is the root filesystem of a sealed base (a change of it waits for
  // the next boot: DESIGN.md "Modules").
  void setup_reconciler() {
    if (!config_.module_auto_apply) {
      log::info("modules.auto_apply", {{"state", "off"}, {"source", config_.module_auto_apply_source},
                                       {"note", "the desired set is stored; cairn-agent update applies it"}});
      return;
    }
    if (config_.module_registry.empty()) {
      log::info("modules.auto_apply", {{"state", "off"}, {"note", "no module registry configured (agent.json modules.registry)"}});
      return;
    }
    if (auto b = boot::read_bootstrap(config_.root); b && b->base) {
      log::info("modules.auto_apply", {{"state", "deferred"}, {"base", b->base->value},
                                       {"note", "the union is / (sealed base): a new desired set is applied at the next boot"}});
      return;
    }
    reconciler_ = std::make_unique<ModuleReconciler>(
        clock_, random01_, ReconcilerOptions{.min_backoff = options_.min_backoff, .max_backoff = options_.max_backoff},
        options_.module_apply ? options_.module_apply : make_module_apply(config_), make_attached_reader(config_),
        reconciled_file(config_));
    log::info("modules.auto_apply", {{"state", "on"}, {"source", config_.module_auto_apply_source}});
  }

  std::uint64_t accepted_policy_version(const Result<modules::PolicyReceipt>& receipt) const {
    using Kind = modules::PolicyReceipt::Kind;
    if (receipt && (receipt->kind == Kind::accepted || receipt->kind == Kind::unchanged)) return receipt->version;
    auto accepted = modules::load_accepted_policy(config_, format_rfc3339(clock_.now()));  // h-polexpiry: 0 once it expired
    return accepted && *accepted ? (*accepted)->version : 0;
  }

  // An update of the reconciler ended: its events (refused, update_failed, verity) go into the
  // buffer, a change that landed becomes module.applied, and they go out now.
  void on_modules(std::optional<ModuleReconciler::Finished> finished) {
    if (!finished) return;
    drain_module_events();
    if (finished->abandoned) {
      log::info("modules.apply_abandoned", {{"note", "the agent is stopping; nothing was mounted or unmounted"}});
      return;
    }
    if (finished->changed) {
      const auto& st = finished->outcome->change.union_outcome.state;
      std::string mounted;
      for (const auto& l : st.layers) mounted += (mounted.empty() ? "" : ", ") + l.name + "@" + l.image_digest;
      std::string message = st.layers.empty() ? "module set applied: no module mounted (the desired set is empty)"
                                              : "module set applied: " + mounted + " (union generation " +
                                                    std::to_string(st.generation) + ")";
      for (const auto& f : finished->outcome->failed) message += "; " + f.name + " left out: " + f.reason.substr(0, 200);
      event("info", "module.applied", message.substr(0, 2 * kMaxErrorInEvent));
      log::info("modules.applied", {{"mounted", mounted}, {"generation", st.generation},
                                    {"left_out", finished->outcome->failed.size()}});
    }
    if (!finished->applied) {
      log::warn("modules.apply_failed", {{"error", finished->error ? finished->error->message : std::string("?")},
                                         {"failures", reconciler_->failures()},
                                         {"retry_in_ms", finished->retry_in.count()}});
    }
    flush_events();
  }

  void flush_events() {
    if (!events_) return;
    // Events dropped at the buffer's cap (control away for long) are said once, as a count.
    if (const auto dropped = events_->dropped(); dropped > dropped_reported_) {
      event("warning", "events.dropped", std::to_string(dropped - dropped_reported_) +
                                             " events were dropped at the buffer's cap while control was away (" +
                                             std::to_string(dropped) + " in all, oldest info events first)");
      dropped_reported_ = dropped;
    }
    if (events_->pending_count() == 0) return;
    auto sent = events::flush(
        *events_, [this](const protocol::EventBatch& b) { return client_->send_events(b); }, kEventBatchesPerTurn);
    if (!sent) {
      log::debug("events.flush_failed", {{"pending", events_->pending_count()}, {"error", sent.error().message}});
    } else if (*sent > 0) {
      log::debug("events.flushed", {{"sent", *sent}, {"pending", events_->pending_count()}});
    }
  }

  // Leases as many tasks as there are free slots and starts them.
  void lease() {
    runner_->reap();
    const auto free = runner_->free_slots();
    if (free == 0) return;
    protocol::LeaseRequest request{.max_tasks = static_cast<std::int64_t>(std::min(free, protocol::kMaxLeaseBatch)),
                                   .lease_s = kLeaseSeconds,
                                   .running = runner_->running_ids()};
    auto answer = client_->lease(request);
    if (!answer) {
      log::warn("task.lease_failed", {{"node", node_id_}, {"error", answer.error().message}});
      return;
    }
    for (const auto& id : answer->cancel) runner_->cancel(id);
    const std::size_t n = std::min(answer->tasks.size(), free);
    for (std::size_t i = 0; i < n; ++i) {
      log::info("task.leased", {{"task", answer->tasks[i].id}, {"kind", answer->tasks[i].kind},
                                {"attempt", answer->tasks[i].attempt}, {"fence", answer->tasks[i].fence}});
      runner_->start(answer->tasks[i]);
    }
    // Control gave more than asked: those are not started; their leases run out and they
    // return to the queue.
    if (answer->tasks.size() > n) log::warn("task.lease_overflow", {{"extra", answer->tasks.size() - n}});
    if (answer->tasks.empty()) work_waiting_ = false;
  }

  // The slim inventory that rides on every heartbeat as capabilities "KEY=VALUE" (a selector
  // k=v can match them; labels stay the operator's): os, os_version, kernel, cpu_model,
  // vendor, product. The whole inventory is the `inventory` task.
  void slim_inventory() {
    const Json inv = tasks::collect_inventory(config_.root);
    const auto put = [&](const std::string& key, const Json& v) {
      if (v.is_string() && !v.get<std::string>().empty()) inventory_caps_.push_back(key + "=" + v.get<std::string>().substr(0, 128));
    };
    put("os", inv["os"]["id"]);
    put("os_version", inv["os"]["version_id"]);
    put("kernel", inv["kernel"]["release"]);
    put("cpu_model", inv["cpu"]["model"]);
    put("vendor", inv["dmi"]["sys_vendor"]);
    put("product", inv["dmi"]["product_name"]);
  }

  std::unique_ptr<tasks::TaskChannel> task_channel() {
    TlsOptions tls;
    {
      std::lock_guard l(tls_mutex_);
      tls = task_tls_;
    }
    return std::make_unique<ControlTaskChannel>(ControlClient(control_url_, make_http_(tls)));
  }

  // What selectors can match beside labels: the task kinds this agent runs, and host features.
  std::vector<std::string> capabilities() const {
    std::vector<std::string> caps;
    for (const auto& k : tasks::kind_names()) caps.push_back("task." + k);
    std::error_code ec;
    if (std::filesystem::exists(config_.root / "run/systemd/system", ec)) caps.push_back("systemd");
    if (std::filesystem::exists(config_.root / "dev/kvm", ec)) caps.push_back("kvm");
    caps.insert(caps.end(), inventory_caps_.begin(), inventory_caps_.end());
    return caps;
  }

  const AgentConfig& config_;
  const ServiceOptions& options_;
  const Clock& clock_;
  const std::function<double()>& random01_;
  StopSignal& stop_;
  const HttpClientFactory& make_http_;
  CredentialStore store_;
  std::optional<milliseconds> watchdog_;
  std::optional<InstalledCredentials> creds_;
  std::optional<ControlClient> client_;
  std::optional<IssuedCredentials> pending_;
  std::string node_id_;
  std::string control_url_ = config_.control_url;
  Clock::WallTime rotate_at_{};
  int failures_ = 0;
  int rotation_failures_ = 0;
  std::string last_rotation_error_;
  bool ready_sent_ = false;
  ServiceStatus status_;
  // Tasks and events (issue 13).
  std::mutex tls_mutex_;
  TlsOptions task_tls_;  // the current client certificate, for task threads' connections
  std::unique_ptr<events::EventBuffer> events_;
  std::unique_ptr<ModuleReconciler> reconciler_;  // modules (h-apply); its worker holds none of this
  std::string last_policy_error_;  // the last receive_policy error logged (logged once per distinct error)
  std::optional<tasks::Runner> runner_;  // declared last: its threads stop first
  bool work_waiting_ = false;
  std::uint64_t dropped_reported_ = 0;
  std::vector<std::string> inventory_caps_;
};

}  // namespace

milliseconds backoff_delay(const ServiceOptions& options, int failures, double random01) {
  const int exponent = std::clamp(failures - 1, 0, 30);
  const double full = std::min<double>(static_cast<double>(options.max_backoff.count()),
                                       static_cast<double>(options.min_backoff.count()) * std::ldexp(1.0, exponent));
  return milliseconds(static_cast<std::int64_t>(full * (0.5 + 0.5 * std::clamp(random01, 0.0, 1.0))));
}

Clock::WallTime rotation_time(const ServiceOptions& options, Clock::WallTime not_before, Clock::WallTime not_after,
                              double random01) {
  // Never later than 90%: a rotation must have time to be retried before expiry.
  const double fraction = std::min(
      0.9, options.rotate_at_fraction + (2.0 * std::clamp(random01, 0.0, 1.0) - 1.0) * options.rotate_jitter);
  const auto lifetime = duration_cast<milliseconds>(not_after - not_before);
  return not_before + milliseconds(static_cast<std::int64_t>(static_cast<double>(lifetime.count()) * fraction));
}

Status run_service(const AgentConfig& config, const ServiceOptions& options, const Clock& clock,
                   const std::function<double()>& random01, StopSignal& stop, const HttpClientFactory& make_http) {
  Loop loop(config, options, clock, random01, stop, make_http);
  return loop.run();
}

}  // namespace cairn::agent
