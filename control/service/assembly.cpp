// ControlService assembled from one class per job (control/service/): the authorisation
// cache, enrollment, rotation, the heartbeat writer, the liveness sweep, the task queue and
// the admin views,
// all on one Store and the cluster CA. This file only wires them and forwards; it is the
// one file that includes every part (the parts include only the contract and the layers below).
#include "control/service.hpp"

#include <memory>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"
#include "control/ca.hpp"
#include "control/service/admin_views.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/cert_issuer.hpp"
#include "control/service/enrollment.hpp"
#include "control/service/escrow.hpp"  // persist (issue 15)
#include "control/service/event_log.hpp"
#include "control/service/heartbeat_writer.hpp"
#include "control/service/id_locks.hpp"
#include "control/service/liveness.hpp"
#include "control/service/module_catalog.hpp"  // modules (h-modctl)
#include "control/service/rotation.hpp"
#include "control/service/task_queue.hpp"
#include "control/store/open_store.hpp"
#include "control/store/store.hpp"

namespace cairn::control {
namespace {

// The state dir's admin.crt (made by init) is an admin credential from the start; one the
// store already knows (revoked or not) is left as it is.
Status register_state_admin(const StatePaths& state, Store& store, const Clock& clock) {
  auto pem = read_file_if_exists(state.admin_cert(), 1 << 20);
  if (!pem) return fail(pem.error());
  if (!*pem) return {};
  auto cert = parse_cert_pem(**pem);
  if (!cert) return fail(cert.error().with_context(state.admin_cert().string()));
  const auto info = cert_info(cert->get());
  if (!info.subject_cn.starts_with(kAdminCnPrefix) || info.serial_hex.empty()) {
    return fail(Errc::config, state.admin_cert().string() + " is not an admin certificate (CN '" +
                                  info.subject_cn + "')",
                "run 'cairn-control init --force --yes-replace-ca' or restore admin.crt");
  }
  return store.insert_admin_cert({info.serial_hex, info.subject_cn.substr(kAdminCnPrefix.size()),
                                  info.fingerprint_sha256, to_unix_ms(clock.now()),
                                  to_unix_ms(info.not_after), std::nullopt});
}

class ServiceImpl final : public ControlService {
 public:
  ServiceImpl(ServiceConfig config, const Clock& clock, CertificateAuthority ca, std::unique_ptr<Store> store)
      : config_(std::move(config)),
        clock_(clock),
        ca_(std::move(ca)),
        store_(std::move(store)),
        auth_(clock_),
        events_(*store_, clock_),
        issuer_(ca_, config_, clock_),
        enrollment_(config_, clock_, *store_, auth_, issuer_, events_, locks_),
        rotation_(config_, clock_, *store_, auth_, issuer_, locks_),
        tasks_(config_, clock_, *store_, config_.random, &events_),
        heartbeats_(config_, clock_, *store_, auth_, events_, tasks_),
        liveness_(config_, clock_, auth_, events_),
        admin_(clock_, *store_, auth_, ca_, locks_) {}

  ServiceImpl(const ServiceImpl&) = delete;
  ServiceImpl& operator=(const ServiceImpl&) = delete;
  ~ServiceImpl() override {
    liveness_.stop();
    heartbeats_.stop();  // writes and answers what is pending first
    tasks_.stop();
  }

  Status start(const StatePaths& state) {
    if (auto ok = register_state_admin(state, *store_, clock_); !ok) return ok;
    // persist (issue 15): the escrow master key of the state dir, made on the first start.
    // Replicas must share it (it is made by `init`): on PostgreSQL a missing one is an error,
    // not a new key that the other replicas could not read.
    if (is_postgres_url(config_.database) && !std::filesystem::exists(state.dir / "escrow.key")) {
      return fail(Errc::config, (state.dir / "escrow.key").string() + ": missing",
                  "copy escrow.key from the state dir of the first replica (made by cairn-control init)");
    }
    auto escrow_master = load_or_create_escrow_master_key(state.dir / "escrow.key");
    if (!escrow_master) return fail(escrow_master.error());
    escrow_store_ = escrow_key_store(*store_);
    escrow_ = std::make_unique<EscrowKeys>(*escrow_store_, std::move(*escrow_master));
    auto snap = store_->load_auth_snapshot(to_unix_ms(clock_.now()));
    if (!snap) return fail(snap.error());
    auth_.load(*snap);
    auto total = store_->enrollments_total();
    if (!total) return fail(total.error());
    enrollment_.set_total(*total);
    if (is_postgres_url(config_.database)) auth_.start_refresh(*store_, config_.auth_refresh_period);
    // modules (h-modpolicy): the policy lives in the store (h-policystore); a state dir's
    // module-policy.json from before is imported once. A file that cannot be imported does not
    // stop the service: nodes keep the policy they hold until a valid one is set.
    module_policy_ = std::make_unique<ModulePolicy>(*store_, clock_);
    if (auto ok = module_policy_->import_file(state.dir / "module-policy.json"); !ok) {
      log::error("modules.policy_import_failed", {{"error", ok.error().message}, {"hint", ok.error().hint}});
    }
    heartbeats_.set_module_policy(module_policy_.get());
    heartbeats_.start();
    liveness_.start();
    tasks_.start();
    log::info("control.store_open", {{"nodes", snap->nodes.size()},
                                     {"certificates", snap->certs.size()},
                                     {"admins", snap->admins.size()},
                                     {"schema_version", store_->schema_version()}});
    return {};
  }

  ApiResult<AuthorizedNode> authorize_node(const Peer& peer) override {
    auto node = auth_.authorize_node(peer);
    if (node) rotation_.confirm_first_use(*node);  // rare: once per rotation
    return node;
  }
  ApiResult<AuthorizedAdmin> authorize_admin(const Peer& peer) override { return auth_.authorize_admin(peer); }

  ApiResult<protocol::CertificateResponse> enroll(std::string_view token,
                                                  const protocol::EnrollRequest& request) override {
    return enrollment_.enroll(token, request);
  }
  ApiResult<protocol::CertificateResponse> rotate(const AuthorizedNode& node,
                                                  const protocol::RotateRequest& request) override {
    return rotation_.rotate(node, request);
  }
  void heartbeat(const AuthorizedNode& node, protocol::HeartbeatRequest request, HeartbeatDone done) override {
    heartbeats_.submit(node, std::move(request), std::move(done));
  }

  ApiResult<Json> admin_create_token(const Json& body) override { return admin_.create_token(body); }
  ApiResult<Json> admin_list_tokens() override { return admin_.list_tokens(); }
  ApiResult<Json> admin_revoke_token(std::string_view id) override { return admin_.revoke_token(id); }
  ApiResult<Json> admin_list_nodes() override { return admin_.list_nodes(); }
  ApiResult<Json> admin_show_node(std::string_view id) override { return admin_.show_node(id); }
  ApiResult<Json> admin_revoke_node(std::string_view id) override { return admin_.revoke_node(id); }
  ApiResult<Json> admin_allow_reenroll(std::string_view id) override { return admin_.allow_reenroll(id); }
  ApiResult<Json> admin_list_events(const EventFilter& filter) override { return admin_.list_events(filter); }
  ApiResult<Json> admin_create_admin(const Json& body) override { return admin_.create_admin(body); }
  ApiResult<Json> admin_list_admins() override { return admin_.list_admins(); }
  ApiResult<Json> admin_revoke_admin(const AuthorizedAdmin& by, std::string_view name) override {
    return admin_.revoke_admin(by, name);
  }

  ApiResult<protocol::LeaseResponse> lease_tasks(const AuthorizedNode& node,
                                                 const protocol::LeaseRequest& request) override {
    return tasks_.lease(node, request);
  }
  ApiResult<protocol::ExtendResponse> extend_task(const AuthorizedNode& node, std::string_view task_id,
                                                  const protocol::ExtendRequest& request) override {
    return tasks_.extend(node, task_id, request);
  }
  ApiResult<protocol::CompleteResponse> complete_task(const AuthorizedNode& node, std::string_view task_id,
                                                      const protocol::CompleteRequest& request) override {
    return tasks_.complete(node, task_id, request);
  }
  ApiResult<protocol::EventBatchResponse> post_events(const AuthorizedNode& node,
                                                      const protocol::EventBatch& batch) override {
    return events_.store_batch(node.node_id(), batch);
  }
  ApiResult<Json> admin_submit_task(const Json& body) override { return tasks_.submit(body); }
  ApiResult<Json> admin_list_tasks(const TaskFilter& filter) override { return tasks_.list(filter); }
  ApiResult<Json> admin_show_task(std::string_view id) override { return tasks_.show(id); }
  ApiResult<Json> admin_cancel_task(std::string_view id) override { return tasks_.cancel(id); }
  void sweep_tasks() override { tasks_.sweep_once(); }
  // task batches (h-taskbatch)
  ApiResult<protocol::CompleteBatchResponse> complete_tasks(const AuthorizedNode& node,
                                                            const protocol::CompleteBatchRequest& request) override {
    return tasks_.complete_batch(node, request);
  }
  ApiResult<Json> admin_submit_tasks(const Json& body) override { return tasks_.submit_batch(body); }
  std::optional<TaskMetrics> task_metrics() override { return tasks_.metrics(); }
  ApiResult<Json> persist_escrow_key(const AuthorizedNode& node) override {  // persist (issue 15)
    if (!escrow_) return refuse(503, "unavailable", "the escrow is not open yet", "retry in a moment");
    return escrow_->key_for(node.node_id());
  }

  // modules (h-modctl): the catalog's admin API (control/service/module_catalog.hpp)
  ApiResult<Json> admin_list_modules() override { return control::admin_list_modules(*store_); }
  ApiResult<Json> admin_add_module(const Json& body) override {
    return control::admin_add_module(*store_, body, to_unix_ms(clock_.now()));
  }
  ApiResult<Json> admin_assign_module(const Json& body) override {
    return control::admin_assign_module(*store_, body, to_unix_ms(clock_.now()));
  }
  ApiResult<Json> admin_unassign_module(std::string_view id) override {
    return control::admin_unassign_module(*store_, id);
  }
  // modules (h-modpolicy)
  ApiResult<Json> admin_show_module_policy() override {
    if (!module_policy_) return refuse(503, "starting", "the control service is starting");
    return module_policy_->admin_show();
  }
  ApiResult<Json> admin_set_module_policy(const Json& body) override {
    if (!module_policy_) return refuse(503, "starting", "the control service is starting");
    return module_policy_->admin_set(body);
  }

  NodeCounts node_counts() override { return auth_.counts(); }
  std::int64_t enrollments_total() override { return enrollment_.total(); }
  void sweep_liveness() override { liveness_.sweep_once(); }

 private:
  // Declaration order is construction order: each part gets references to those above it.
  ServiceConfig config_;
  const Clock& clock_;
  CertificateAuthority ca_;
  std::unique_ptr<Store> store_;
  IdLocks locks_;
  AuthCache auth_;
  EventLog events_;
  CertIssuer issuer_;
  Enrollment enrollment_;
  Rotation rotation_;
  TaskQueue tasks_;
  std::unique_ptr<ModulePolicy> module_policy_;  // modules (h-modpolicy); before heartbeats_, which reads it
  HeartbeatWriter heartbeats_;
  LivenessSweep liveness_;
  AdminViews admin_;
  std::unique_ptr<EscrowKeyStore> escrow_store_;  // persist (issue 15)
  std::unique_ptr<EscrowKeys> escrow_;
};

}  // namespace

Result<std::unique_ptr<ControlService>> open_service(const StatePaths& state, ServiceConfig config,
                                                     const Clock& clock) {
  if (config.cert_lifetime.count() <= 0 || config.heartbeat_interval.count() <= 0 ||
      config.unreachable_after_intervals <= 0 || config.rotation_grace.count() < 0 ||
      config.liveness_sweep_period.count() <= 0) {
    return fail(Errc::config,
                "the certificate lifetime, heartbeat interval, unreachable-after count and liveness "
                "sweep period must be positive, the rotation grace not negative");
  }
  auto fraction = [](double v) { return v > 0 && v <= 1; };
  if (!fraction(config.headroom_cpu) || !fraction(config.headroom_mem) || !fraction(config.headroom_disk)) {
    return fail(Errc::config, "the CPU, memory and disk headroom must be fractions above 0 and at most 1",
                "e.g. --headroom-cpu 0.8");
  }
  if (config.min_lease.count() <= 0 || config.max_lease < config.min_lease || config.retry_base.count() <= 0 ||
      config.retry_cap < config.retry_base || config.task_history.count() <= 0 ||
      config.task_history_per_node <= 0 || config.task_sweep_period.count() <= 0) {
    return fail(Errc::config,
                "the lease bounds, retry backoff, task history (time and count) and task sweep period must be "
                "positive, each maximum at least its minimum");
  }
  auto ca = CertificateAuthority::load(state);
  if (!ca) return fail(ca.error());
  auto store = open_store(state, config.database);
  if (!store) return fail(store.error());
  auto service = std::make_unique<ServiceImpl>(std::move(config), clock, std::move(*ca), std::move(*store));
  if (auto ok = service->start(state); !ok) return fail(ok.error().with_context("open control service"));
  return std::unique_ptr<ControlService>(std::move(service));
}

}  // namespace cairn::control
