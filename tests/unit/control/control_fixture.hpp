// A real control service for unit tests: a state dir made by init_state in a TempDir, the
// SQLite store on disk, a manual clock; plus helpers to make node keys, CSRs and tokens.
#pragma once

#include <doctest/doctest.h>

#include <future>
#include <memory>
#include <string>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/uuid.hpp"
#include "control/service.hpp"
#include "control/state.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

struct TestNode {
  std::string id;
  EvpPkey key;
  std::string csr_pem;
};

inline TestNode make_node(KeyType type = KeyType::ed25519) {
  TestNode n;
  n.id = random_uuid().str();
  auto key = generate_key(type);
  REQUIRE(key);
  n.key = std::move(*key);
  auto csr = make_csr_pem(n.key.get(), n.id);
  REQUIRE(csr);
  n.csr_pem = *csr;
  return n;
}

inline protocol::EnrollRequest enroll_request(const TestNode& n) {
  protocol::EnrollRequest r;
  r.identity.node_id = n.id;
  r.identity.source = "cmdline";
  r.identity.platform = "qemu";
  r.identity.hostname = "node-" + n.id.substr(0, 8);
  r.csr_pem = n.csr_pem;
  return r;
}

inline control::Peer peer_of(const std::string& cert_pem) {
  auto cert = parse_cert_pem(cert_pem);
  REQUIRE(cert);
  const auto info = cert_info(cert->get());
  return control::Peer{true, info.subject_cn, info.serial_hex};
}

inline protocol::HeartbeatRequest sample_heartbeat(const std::string& boot_id = "boot-1") {
  protocol::HeartbeatRequest hb;
  hb.boot_id = boot_id;
  hb.agent_version = "0.1.0";
  hb.modules = {{"base", "sha256:" + std::string(64, 'a'), true}};
  hb.mount_state = "mounted";
  hb.load1 = 0.5;
  hb.load5 = 0.25;
  hb.load15 = 0.125;
  hb.cpu_count = 4;
  hb.mem_total_bytes = 8ULL << 30;
  hb.mem_available_bytes = 6ULL << 30;
  hb.disk_total_bytes = 100ULL << 30;
  hb.disk_free_bytes = 70ULL << 30;
  hb.uptime_s = 1234;
  hb.cert_not_after = "2030-03-01T00:00:00.000Z";
  hb.labels = {{"rack", "r1"}};
  return hb;
}

// "ok", or the refusal's code: a check on it fails visibly whichever way the call went.
template <class T>
std::string code_of(const control::ApiResult<T>& r) {
  return r ? "ok" : r.error().body.code;
}
template <class T>
int status_of(const control::ApiResult<T>& r) {
  return r ? 200 : r.error().http_status;
}

// A node key that is not the one in its enrolled certificate, with a CSR for the same id.
inline TestNode same_id_new_key(const TestNode& n) {
  TestNode other = make_node();
  other.id = n.id;
  auto csr = make_csr_pem(other.key.get(), n.id);
  REQUIRE(csr);
  other.csr_pem = *csr;
  return other;
}

struct ControlFixture {
  TempDir dir;
  ManualClock clock;
  control::StatePaths state{dir.path() / "state"};
  control::ServiceConfig config;
  std::unique_ptr<control::ControlService> service;

  // The liveness sweep's thread is parked (1 h period) unless a test asks for it: tests call
  // sweep_liveness() to run a pass at a point they choose.
  explicit ControlFixture(control::ServiceConfig cfg = {}, bool sweep_thread = false) : config(std::move(cfg)) {
    if (!sweep_thread) config.liveness_sweep_period = std::chrono::hours(1);
    if (!sweep_thread) config.task_sweep_period = std::chrono::hours(1);  // tasks: sweep_tasks()
    log::set_min_level(log::Level::warning);  // enroll.ok etc. would drown the test report
    auto init = control::init_state(state, {}, clock);
    REQUIRE_MESSAGE(init, (init ? "" : init.error().message));
    open();
  }
  void open() {
    auto s = control::open_service(state, config, clock);
    REQUIRE_MESSAGE(s, (s ? "" : s.error().message));
    service = std::move(*s);
  }
  void reopen() {
    service.reset();
    open();
  }

  // Returns the raw token of a new bootstrap token made through the admin API.
  std::string token(const Json& body = Json::object()) {
    auto r = service->admin_create_token(body);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().body.message));
    return (*r)["token"].get<std::string>();
  }

  control::ApiResult<protocol::CertificateResponse> enroll(const TestNode& n,
                                                           const std::string& token_text) {
    return service->enroll(token_text, enroll_request(n));
  }

  // Enrolls with a fresh token and returns the node's peer.
  control::Peer enrolled(const TestNode& n) {
    auto r = enroll(n, token());
    REQUIRE_MESSAGE(r, (r ? "" : r.error().body.code));
    return peer_of(r->certificate_pem);
  }

  // As the router does: authorized once, then the call.
  control::ApiResult<protocol::HeartbeatResponse> beat(const control::Peer& peer,
                                                       protocol::HeartbeatRequest hb = sample_heartbeat()) {
    auto node = service->authorize_node(peer);
    if (!node) return std::unexpected(node.error());
    std::promise<control::ApiResult<protocol::HeartbeatResponse>> promise;
    auto future = promise.get_future();
    service->heartbeat(*node, std::move(hb),
                       [&promise](control::ApiResult<protocol::HeartbeatResponse> r) {
                         promise.set_value(std::move(r));
                       });
    return future.get();
  }

  control::ApiResult<protocol::CertificateResponse> rotate(const control::Peer& peer, const std::string& csr_pem) {
    auto node = service->authorize_node(peer);
    if (!node) return std::unexpected(node.error());
    return service->rotate(*node, {csr_pem});
  }

  // The peer of the state dir's admin.crt (made by init, registered at start).
  control::Peer state_admin() {
    auto pem = read_file(state.admin_cert(), 1 << 20);
    REQUIRE(pem);
    return peer_of(*pem);
  }

  std::string state_of(const std::string& node_id) {
    auto r = service->admin_show_node(node_id);
    REQUIRE(r);
    return (*r)["state"].get<std::string>();
  }
};

}  // namespace cairn::test
