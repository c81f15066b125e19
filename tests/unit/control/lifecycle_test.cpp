// Certificate lifecycle rules (issue 12, section 3) and liveness/events (section 4) on a real
// service: rotation retires, re-enrollment needs a bound token, the operator or proof of the
// current key, concurrent same-id enrollments agree, admin credentials are checked per call.
#include <doctest/doctest.h>

#include <sqlite3.h>

#include <atomic>
#include <map>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "common/time.hpp"
#include "control/store/sqlite.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace std::chrono_literals;

namespace {

// The events of one node as listed by the admin API, oldest first.
Json events_of(ControlFixture& f, const std::string& node_id) {
  control::EventFilter filter;
  filter.node_id = node_id;
  auto r = f.service->admin_list_events(filter);
  REQUIRE_MESSAGE(r, code_of(r));
  return (*r)["events"];
}

int count_kind(const Json& events, std::string_view kind) {
  int n = 0;
  for (const auto& e : events) n += e["kind"] == kind ? 1 : 0;
  return n;
}

protocol::EnrollRequest with_proof(const TestNode& fresh, const EVP_PKEY* signing_key, const std::string& serial) {
  auto req = enroll_request(fresh);
  auto proof = protocol::make_enroll_proof(signing_key, serial, fresh.id, fresh.csr_pem);
  REQUIRE(proof);
  req.proof = *proof;
  return req;
}

std::string upper_copy(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Polls cond until it holds or 10 s pass.
template <class Cond>
bool eventually(Cond cond) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

}  // namespace

// --- rotation ---------------------------------------------------------------------------

TEST_CASE("rotation: the old certificate works for the grace, then is refused; only the newest rotates") {
  control::ServiceConfig cfg;
  cfg.cert_lifetime = 1h;
  cfg.rotation_grace = 10min;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto old_peer = f.enrolled(node);
  f.clock.advance(45min);
  const auto fresh = same_id_new_key(node);
  auto r = f.rotate(old_peer, fresh.csr_pem);
  REQUIRE_MESSAGE(r, code_of(r));
  const auto new_peer = peer_of(r->certificate_pem);
  CHECK(new_peer.subject_cn == node.id);
  CHECK(new_peer.serial_hex != old_peer.serial_hex);
  CHECK(f.service->authorize_node(new_peer));
  CHECK(f.service->authorize_node(old_peer));  // in flight while the agent switches over

  // A rotated-out key cannot mint another certificate, even inside the grace.
  auto again = f.rotate(old_peer, make_csr_pem(node.key.get(), node.id).value());
  REQUIRE(!again);
  CHECK(again.error().http_status == 403);
  CHECK(again.error().body.code == "cert_not_current");

  f.clock.advance(10min);  // the grace is over
  auto retired = f.service->authorize_node(old_peer);
  REQUIRE(!retired);
  CHECK(retired.error().http_status == 401);
  CHECK(retired.error().body.code == "cert_retired");
  CHECK(f.service->authorize_node(new_peer));
  CHECK(f.rotate(new_peer, fresh.csr_pem));  // the newest one may rotate

  // The store agrees: after a restart the retired one is still refused.
  f.reopen();
  CHECK(code_of(f.service->authorize_node(old_peer)) == "cert_unknown");
  CHECK(code_of(f.rotate(old_peer, fresh.csr_pem)) == "cert_unknown");
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  REQUIRE((*shown)["certificates"].size() == 3);
  CHECK((*shown)["certificates"][2]["status"] == "retired");  // the oldest (list is newest first)
  CHECK(f.service->enrollments_total() == 1);  // a rotation is not an enrollment
}

TEST_CASE("rotation: the grace is configurable and a restart inside it keeps it") {
  control::ServiceConfig cfg;
  cfg.rotation_grace = 30s;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto old_peer = f.enrolled(node);
  auto rotated = f.rotate(old_peer, node.csr_pem);
  REQUIRE(rotated);
  REQUIRE(f.service->authorize_node(peer_of(rotated->certificate_pem)));  // the node switched
  f.clock.advance(29s);
  f.reopen();
  CHECK(f.service->authorize_node(old_peer));
  CHECK(code_of(f.rotate(old_peer, node.csr_pem)) == "cert_not_current");
  f.clock.advance(1s);
  CHECK(code_of(f.service->authorize_node(old_peer)) == "cert_retired");
}

TEST_CASE("rotation: until the node uses its new certificate, the old one may rotate again") {
  // The answer of a rotation can be lost (network) or the node may fail to store it (a full
  // or read-only disk): the node must not lock itself out by rotating once.
  control::ServiceConfig cfg;
  cfg.rotation_grace = 1min;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto old_peer = f.enrolled(node);
  auto lost = f.rotate(old_peer, node.csr_pem);
  REQUIRE(lost);
  f.clock.advance(1h);  // far past the grace: the old one was never replaced in use
  CHECK(f.service->authorize_node(old_peer));
  auto retried = f.rotate(old_peer, node.csr_pem);
  REQUIRE_MESSAGE(retried, code_of(retried));
  // The unused certificate is superseded, in memory and (after a restart) in the store.
  CHECK(code_of(f.service->authorize_node(peer_of(lost->certificate_pem))) == "cert_unknown");
  const auto fresh = peer_of(retried->certificate_pem);
  f.reopen();
  CHECK(code_of(f.service->authorize_node(peer_of(lost->certificate_pem))) == "cert_unknown");
  CHECK(f.service->authorize_node(old_peer));
  REQUIRE(f.service->authorize_node(fresh));  // first use: the old one retires after the grace
  CHECK(code_of(f.rotate(old_peer, node.csr_pem)) == "cert_not_current");
  f.clock.advance(1min);
  CHECK(code_of(f.service->authorize_node(old_peer)) == "cert_retired");
  f.reopen();
  CHECK(code_of(f.service->authorize_node(old_peer)) == "cert_unknown");
  CHECK(f.service->authorize_node(fresh));
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  std::map<std::string, int> by_status;
  for (const auto& c : (*shown)["certificates"]) ++by_status[c["status"].get<std::string>()];
  CHECK(by_status == std::map<std::string, int>{{"active", 1}, {"superseded", 1}, {"retired", 1}});
}

TEST_CASE("rotation: concurrent rotations with one certificate leave one current replacement") {
  ControlFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto authorized = f.service->authorize_node(peer);
  REQUIRE(authorized);
  std::vector<control::ApiResult<protocol::CertificateResponse>> results(8);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = f.service->rotate(*authorized, {node.csr_pem}); });
  }
  for (auto& t : threads) t.join();
  std::vector<std::string> current;
  for (const auto& r : results) {
    REQUIRE_MESSAGE(r, code_of(r));  // none used yet: each rotation supersedes the previous one
    const auto p = peer_of(r->certificate_pem);
    if (f.service->authorize_node(p)) current.push_back(p.serial_hex);
  }
  REQUIRE(current.size() == 1);
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  std::vector<std::string> active;
  for (const auto& c : (*shown)["certificates"]) {
    if (c["status"] == "active" && c["serial"] != peer.serial_hex) active.push_back(c["serial"].get<std::string>());
  }
  REQUIRE(active.size() == 1);
  CHECK(active[0] == current[0]);
  // that one was just used: from now on the enrolled certificate may not rotate
  CHECK(code_of(f.rotate(peer, node.csr_pem)) == "cert_not_current");
}

// --- re-enrollment ----------------------------------------------------------------------

TEST_CASE("a fleet token presenting an existing id is refused with node_exists and an event") {
  ControlFixture f;
  const auto node = make_node();
  const auto first = f.enrolled(node);
  const auto clone = same_id_new_key(node);
  auto fleet_token = f.service->admin_create_token({{"uses", 10}});
  REQUIRE(fleet_token);
  const auto fleet = (*fleet_token)["token"].get<std::string>();
  auto r = f.enroll(clone, fleet);
  REQUIRE(!r);
  CHECK(r.error().http_status == 409);
  CHECK(r.error().body.code == "node_exists");
  CHECK(r.error().body.hint.find("--expect-id " + node.id) != std::string::npos);
  CHECK(f.service->authorize_node(first));  // the real node keeps working
  CHECK(f.service->enrollments_total() == 1);

  // the same machine retrying is one event; the refusal did not consume the token
  CHECK(code_of(f.enroll(clone, fleet)) == "node_exists");
  auto events = events_of(f, node.id);
  CHECK(count_kind(events, "enroll.node_exists") == 1);
  REQUIRE(events.size() == 1);
  CHECK(events[0]["severity"] == "warning");
  CHECK(events[0]["message"].get<std::string>().find("hostname 'node-") != std::string::npos);
  auto tokens = f.service->admin_list_tokens();
  REQUIRE(tokens);
  int checked = 0;
  for (const auto& t : (*tokens)["tokens"]) {
    if (t["id"] != (*fleet_token)["id"]) continue;
    CHECK(t["uses"] == 0);
    ++checked;
  }
  CHECK(checked == 1);
}

TEST_CASE("a node past its certificate's expiry re-enrolls with a token bound to its id") {
  control::ServiceConfig cfg;
  cfg.cert_lifetime = 1h;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto old = f.enrolled(node);
  f.clock.advance(3h);  // the machine was off
  CHECK(code_of(f.service->authorize_node(old)) == "cert_expired");
  CHECK(code_of(f.enroll(node, f.token())) == "node_exists");  // a fleet token does not do it
  auto r = f.enroll(node, f.token({{"expect_id", node.id}}));
  REQUIRE_MESSAGE(r, code_of(r));
  const auto renewed = peer_of(r->certificate_pem);
  CHECK(f.service->authorize_node(renewed));
  CHECK(count_kind(events_of(f, node.id), "node.reenrolled") == 1);
}

TEST_CASE("node allow-reenroll lets one enrollment with a fleet token through, within an hour") {
  ControlFixture f;
  const auto node = make_node();
  f.enrolled(node);
  const auto fleet = f.token({{"uses", 10}, {"ttl_s", 24 * 3600}});
  auto allowed = f.service->admin_allow_reenroll(node.id);
  REQUIRE_MESSAGE(allowed, code_of(allowed));
  CHECK((*allowed)["reenroll_allowed_until"] == format_rfc3339(f.clock.now() + 1h));
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  CHECK(!(*shown)["reenroll_allowed_until"].is_null());

  const auto replacement = same_id_new_key(node);
  auto r = f.enroll(replacement, fleet);
  REQUIRE_MESSAGE(r, code_of(r));
  CHECK(f.service->authorize_node(peer_of(r->certificate_pem)));
  CHECK(code_of(f.enroll(same_id_new_key(node), fleet)) == "node_exists");  // used up

  // an allowance runs out
  REQUIRE(f.service->admin_allow_reenroll(node.id));
  f.clock.advance(61min);
  CHECK(code_of(f.enroll(same_id_new_key(node), fleet)) == "node_exists");

  CHECK(status_of(f.service->admin_allow_reenroll(make_node().id)) == 404);
  CHECK(status_of(f.service->admin_allow_reenroll("not-a-uuid")) == 404);
  REQUIRE(f.service->admin_revoke_node(node.id));
  CHECK(code_of(f.service->admin_allow_reenroll(node.id)) == "node_revoked");
}

TEST_CASE("proof of the current key lets an enrolled node re-enroll with a fleet token") {
  control::ServiceConfig cfg;
  cfg.cert_lifetime = 1h;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  const auto fleet = f.token({{"uses", 10}});
  const auto fresh = same_id_new_key(node);

  SUBCASE("signed by the current key: accepted, the old certificate replaced") {
    auto r = f.service->enroll(fleet, with_proof(fresh, node.key.get(), peer.serial_hex));
    REQUIRE_MESSAGE(r, code_of(r));
    CHECK(f.service->authorize_node(peer_of(r->certificate_pem)));
    CHECK(code_of(f.service->authorize_node(peer)) == "cert_unknown");
    auto events = events_of(f, node.id);
    REQUIRE(count_kind(events, "node.reenrolled") == 1);
    CHECK(events.back()["message"].get<std::string>().find("proof_of_key") != std::string::npos);
  }
  SUBCASE("serial written in lower case: the same certificate") {
    std::string lower = peer.serial_hex;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    CHECK(f.service->enroll(fleet, with_proof(fresh, node.key.get(), lower)));
  }
  SUBCASE("signed by another key (a clone that copied only the id): node_exists") {
    auto r = f.service->enroll(fleet, with_proof(fresh, fresh.key.get(), peer.serial_hex));
    REQUIRE(!r);
    CHECK(r.error().body.code == "node_exists");
    CHECK(r.error().body.message.find("does not verify") != std::string::npos);
    CHECK(count_kind(events_of(f, node.id), "enroll.node_exists") == 1);
  }
  SUBCASE("a signature over another CSR: node_exists") {
    auto req = with_proof(fresh, node.key.get(), peer.serial_hex);
    req.csr_pem = same_id_new_key(node).csr_pem;
    CHECK(code_of(f.service->enroll(fleet, req)) == "node_exists");
  }
  SUBCASE("a serial that is not the node's: node_exists") {
    CHECK(code_of(f.service->enroll(fleet, with_proof(fresh, node.key.get(), "ABCDEF"))) == "node_exists");
  }
  SUBCASE("the key of a rotated-out certificate: node_exists") {
    auto rotated = f.rotate(peer, fresh.csr_pem);
    REQUIRE(rotated);
    REQUIRE(f.service->authorize_node(peer_of(rotated->certificate_pem)));  // the node switched
    auto r = f.service->enroll(fleet, with_proof(same_id_new_key(node), node.key.get(), peer.serial_hex));
    REQUIRE(!r);
    CHECK(r.error().body.message.find("not the node's current one") != std::string::npos);
  }
  SUBCASE("the key of an expired certificate: node_exists (that needs a bound token)") {
    f.clock.advance(2h);
    auto r = f.service->enroll(fleet, with_proof(fresh, node.key.get(), peer.serial_hex));
    REQUIRE(!r);
    CHECK(r.error().body.message.find("expired") != std::string::npos);
  }
}

TEST_CASE("8 concurrent enrollments of one id, 50 times: memory and the store agree") {
  ControlFixture f;
  constexpr int kRounds = 50;
  constexpr int kConcurrent = 8;
  for (int round = 0; round < kRounds; ++round) {
    CAPTURE(round);
    const auto base = make_node();
    std::vector<TestNode> machines;
    for (int i = 0; i < kConcurrent; ++i) machines.push_back(same_id_new_key(base));
    const auto token = f.token({{"expect_id", base.id}, {"uses", kConcurrent}});
    std::vector<control::ApiResult<protocol::CertificateResponse>> results(kConcurrent);
    std::vector<std::thread> threads;
    std::atomic<bool> go{false};
    for (int i = 0; i < kConcurrent; ++i) {
      threads.emplace_back([&, i] {
        while (!go.load()) std::this_thread::yield();
        results[static_cast<std::size_t>(i)] = f.enroll(machines[static_cast<std::size_t>(i)], token);
      });
    }
    go = true;
    for (auto& t : threads) t.join();

    // Every enrollment succeeded (bound token); exactly one certificate is current, in
    // memory and in the store, and it is the same one.
    std::vector<std::string> authorized;
    for (const auto& r : results) {
      REQUIRE_MESSAGE(r, code_of(r));
      const auto peer = peer_of(r->certificate_pem);
      if (f.service->authorize_node(peer)) authorized.push_back(peer.serial_hex);
    }
    REQUIRE(authorized.size() == 1);
    auto shown = f.service->admin_show_node(base.id);
    REQUIRE(shown);
    CHECK((*shown)["enroll_count"] == kConcurrent);
    std::vector<std::string> active;
    for (const auto& c : (*shown)["certificates"]) {
      if (c["status"] == "active") active.push_back(c["serial"].get<std::string>());
    }
    REQUIRE(active.size() == 1);
    CHECK(active[0] == authorized[0]);
  }
  CHECK(f.service->enrollments_total() == kRounds * kConcurrent);
  // and a restart (the store alone) authorizes the same certificates
  f.reopen();
  CHECK(f.service->enrollments_total() == kRounds * kConcurrent);
}

TEST_CASE("concurrent first enrollments of one id with a fleet token: one wins, the rest get node_exists") {
  ControlFixture f;
  const auto base = make_node();
  const auto token = f.token({{"uses", 8}});
  std::vector<TestNode> machines;
  for (int i = 0; i < 8; ++i) machines.push_back(same_id_new_key(base));
  std::vector<control::ApiResult<protocol::CertificateResponse>> results(8);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 8; ++i) threads.emplace_back([&, i] { results[i] = f.enroll(machines[i], token); });
  for (auto& t : threads) t.join();
  int ok = 0;
  for (const auto& r : results) {
    if (r) ++ok;
    else CHECK(r.error().body.code == "node_exists");
  }
  CHECK(ok == 1);
  CHECK(f.service->enrollments_total() == 1);
}

// --- admin credentials ------------------------------------------------------------------

TEST_CASE("admin credentials: created from a CSR, checked per request, revoked by name") {
  ControlFixture f;
  const auto root = f.state_admin();
  auto root_admin = f.service->authorize_admin(root);
  REQUIRE_MESSAGE(root_admin, code_of(root_admin));
  CHECK(root_admin->name() == "admin");

  auto key = generate_key(KeyType::p256);
  REQUIRE(key);
  auto csr = make_csr_pem(key->get(), "admin:alice");
  REQUIRE(csr);
  auto created = f.service->admin_create_admin({{"name", "alice"}, {"csr", *csr}});
  REQUIRE_MESSAGE(created, code_of(created));
  auto alice_cert = parse_cert_pem((*created)["certificate"].get<std::string>());
  REQUIRE(alice_cert);
  CHECK(EVP_PKEY_eq(X509_get0_pubkey(alice_cert->get()), key->get()) == 1);
  const auto alice = peer_of((*created)["certificate"].get<std::string>());
  CHECK(alice.subject_cn == "admin:alice");
  auto alice_admin = f.service->authorize_admin(alice);
  REQUIRE(alice_admin);

  auto listed = f.service->admin_list_admins();
  REQUIRE(listed);
  CHECK((*listed)["admins"].size() == 2);

  // nobody revokes themselves; another admin can, and the next request is refused
  CHECK(code_of(f.service->admin_revoke_admin(*alice_admin, "alice")) == "admin_self_revoke");
  auto revoked = f.service->admin_revoke_admin(*root_admin, "alice");
  REQUIRE_MESSAGE(revoked, code_of(revoked));
  CHECK((*revoked)["revoked"] == 1);
  auto refused = f.service->authorize_admin(alice);
  REQUIRE(!refused);
  CHECK(refused.error().http_status == 403);
  CHECK(refused.error().body.code == "admin_revoked");
  CHECK(code_of(f.service->admin_revoke_admin(*root_admin, "alice")) == "admin_not_found");

  f.reopen();  // the store remembers both
  CHECK(code_of(f.service->authorize_admin(alice)) == "admin_revoked");
  CHECK(f.service->authorize_admin(root));
}

TEST_CASE("admin credentials: unknown serials, node certs and bad requests are refused") {
  ControlFixture f;
  const auto node_peer = f.enrolled(make_node());
  CHECK(code_of(f.service->authorize_admin(node_peer)) == "not_admin");
  CHECK(code_of(f.service->authorize_admin(control::Peer{})) == "client_cert_required");
  CHECK(code_of(f.service->authorize_admin(control::Peer{true, "admin:admin", "ABCDEF"})) == "admin_cert_unknown");
  CHECK(code_of(f.service->authorize_node(f.state_admin())) == "admin_cert_not_a_node");

  auto key = generate_key(KeyType::p256);
  REQUIRE(key);
  auto other_cn = make_csr_pem(key->get(), "admin:mallory");
  REQUIRE(other_cn);
  CHECK(code_of(f.service->admin_create_admin({{"name", "bad name"}, {"csr", *other_cn}})) == "invalid_request");
  CHECK(code_of(f.service->admin_create_admin({{"name", std::string(59, 'a')}, {"csr", *other_cn}})) == "invalid_request");
  CHECK(code_of(f.service->admin_create_admin({{"name", "bob"}, {"csr", "garbage"}})) == "csr_invalid");
  CHECK(code_of(f.service->admin_create_admin({{"name", "bob"}})) == "invalid_request");
  // The CA names the certificate from `name`, never from the CSR's subject.
  auto made = f.service->admin_create_admin({{"name", "bob"}, {"csr", *other_cn}});
  REQUIRE(made);
  CHECK(peer_of((*made)["certificate"].get<std::string>()).subject_cn == "admin:bob");
}

// --- liveness and events ----------------------------------------------------------------

TEST_CASE("the liveness sweep's own thread turns a silent node Unreachable once, with one event") {
  control::ServiceConfig cfg;
  cfg.heartbeat_interval = 10s;
  cfg.unreachable_after_intervals = 3;
  cfg.liveness_sweep_period = 10ms;
  ControlFixture f(cfg, /*sweep_thread=*/true);
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  REQUIRE(f.beat(peer));
  CHECK(f.state_of(node.id) == "Ready");
  f.clock.advance(31s);
  // Nobody reads /metrics or the node list: the sweep alone moves it.
  REQUIRE(eventually([&] { return f.service->node_counts().unreachable == 1; }));
  CHECK(f.state_of(node.id) == "Unreachable");
  auto events = events_of(f, node.id);
  REQUIRE(count_kind(events, "node.unreachable") == 1);

  REQUIRE(f.beat(peer));  // back: Ready at once, with a node.ready event
  CHECK(f.state_of(node.id) == "Ready");
  CHECK(count_kind(events_of(f, node.id), "node.ready") == 1);

  f.clock.advance(31s);
  REQUIRE(eventually([&] { return f.state_of(node.id) == "Unreachable"; }));
  REQUIRE(eventually([&] { return count_kind(events_of(f, node.id), "node.unreachable") == 2; }));

  // A restart finds it lapsed again: the same episode, no new event.
  f.reopen();
  CHECK(f.state_of(node.id) == "Unreachable");
  CHECK(count_kind(events_of(f, node.id), "node.unreachable") == 2);
}

TEST_CASE("events are listed by node and since, oldest first; agent ids kept, duplicates dropped") {
  ControlFixture f;
  const auto a = make_node();
  const auto b = make_node();
  const auto pa = f.enrolled(a);
  const auto pb = f.enrolled(b);
  auto hb = sample_heartbeat();
  hb.events = {{"rot-episode-1", "warning", "cert.rotation_failing", "rotation failed", "t"}};
  REQUIRE(f.beat(pa, hb));
  const auto t1 = f.clock.now();
  f.clock.advance(1min);
  REQUIRE(f.beat(pa, hb));  // the same episode again: dropped
  hb.events = {{"other", "info", "note", "hello", "t"}};
  REQUIRE(f.beat(pb, hb));
  const auto t2 = f.clock.now();

  auto all = f.service->admin_list_events({});
  REQUIRE(all);
  REQUIRE((*all)["events"].size() == 2);
  CHECK((*all)["events"][0]["id"] == "rot-episode-1");
  CHECK((*all)["events"][0]["node"] == a.id);
  CHECK((*all)["events"][0]["received_at"] == format_rfc3339(t1));
  CHECK((*all)["events"][1]["id"] == "other");

  control::EventFilter since;
  since.since_ms = to_unix_ms(t2);
  auto recent = f.service->admin_list_events(since);
  REQUIRE(recent);
  REQUIRE((*recent)["events"].size() == 1);
  CHECK((*recent)["events"][0]["node"] == b.id);

  auto of_a = events_of(f, a.id);
  REQUIRE(of_a.size() == 1);
  CHECK(of_a[0]["kind"] == "cert.rotation_failing");

  control::EventFilter limited;
  limited.limit = 1;
  auto newest = f.service->admin_list_events(limited);
  REQUIRE(newest);
  REQUIRE((*newest)["events"].size() == 1);
  CHECK((*newest)["events"][0]["id"] == "other");

  control::EventFilter bad;
  bad.node_id = "nope";
  CHECK(code_of(f.service->admin_list_events(bad)) == "invalid_request");
}

TEST_CASE("a heartbeat's events are capped in number and size") {
  ControlFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto hb = sample_heartbeat();
  for (int i = 0; i < 150; ++i) {
    hb.events.push_back({"e" + std::to_string(i), "info", "k", std::string(10'000, 'm'), "t"});
  }
  REQUIRE(f.beat(peer, hb));
  control::EventFilter filter;
  filter.node_id = node.id;
  auto r = f.service->admin_list_events(filter);
  REQUIRE(r);
  CHECK((*r)["events"].size() == 100);
  CHECK((*r)["events"][0]["message"].get<std::string>().size() == 4096);
}

TEST_CASE("the enroll proof travels in the request body and is optional") {
  const auto node = make_node();
  auto req = enroll_request(node);
  CHECK(!dump_json(protocol::to_json(req)).contains("proof"));
  auto decoded = protocol::decode_enroll_request(dump_json(protocol::to_json(req)));
  REQUIRE(decoded);
  CHECK(!decoded->proof);
  req.proof = protocol::EnrollProof{"ABC", "00ff"};
  decoded = protocol::decode_enroll_request(dump_json(protocol::to_json(req)));
  REQUIRE(decoded);
  REQUIRE(decoded->proof);
  CHECK(decoded->proof->cert_serial == "ABC");
  CHECK(decoded->proof->signature_hex == "00ff");
  CHECK(!protocol::decode_enroll_request(R"({"identity": {"node_id": "x"}, "csr": "c", "proof": {"cert_serial": 1}})"));
  // The message binds the node id (in any case) and the CSR.
  CHECK(protocol::enroll_proof_message(node.id, "csr") == protocol::enroll_proof_message(upper_copy(node.id), "csr"));
  CHECK(protocol::enroll_proof_message(node.id, "csr") != protocol::enroll_proof_message(node.id, "csr2"));
}
