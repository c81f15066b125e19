#include <doctest/doctest.h>

#include <openssl/pem.h>

#include <chrono>
#include <string>

#include "common/fs.hpp"
#include "common/time.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace std::chrono_literals;

namespace {

std::string refusal_code(const control::ApiResult<protocol::CertificateResponse>& r) { return code_of(r); }

// The CSR with the last byte of its signature flipped: still DER, no longer signed.
std::string tampered_csr(const std::string& pem) {
  auto req = parse_csr_pem(pem);
  REQUIRE(req);
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(req->get(), &der);
  REQUIRE(len > 0);
  der[len - 1] ^= 0x01;
  const unsigned char* p = der;
  X509ReqPtr bad(d2i_X509_REQ(nullptr, &p, len));
  OPENSSL_free(der);
  REQUIRE(bad);
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), bad.get());
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

}  // namespace

TEST_CASE("enroll issues a certificate for the node id that verifies against ca.crt") {
  control::ServiceConfig cfg;
  cfg.cert_lifetime = 7 * 24h;
  cfg.heartbeat_interval = 15s;
  ControlFixture f(cfg);
  const auto node = make_node();
  auto r = f.enroll(node, f.token());
  REQUIRE_MESSAGE(r, refusal_code(r));
  CHECK(r->node_id == node.id);
  CHECK(r->heartbeat_interval_s == 15);
  auto cert = parse_cert_pem(r->certificate_pem);
  REQUIRE(cert);
  auto ca_pem = read_file(f.state.ca_cert(), 1 << 20);
  REQUIRE(ca_pem);
  CHECK(r->ca_chain_pem == *ca_pem);
  CHECK(verify_cert_chain(cert->get(), *ca_pem, f.clock.now()));
  const auto info = cert_info(cert->get());
  CHECK(info.subject_cn == node.id);
  CHECK(info.not_after - std::chrono::time_point_cast<std::chrono::seconds>(f.clock.now()) == 7 * 24h);
  CHECK(r->not_after == format_rfc3339(info.not_after));
  CHECK((X509_get_extended_key_usage(cert->get()) & XKU_SSL_CLIENT) != 0);
  CHECK((X509_get_extended_key_usage(cert->get()) & XKU_SSL_SERVER) == 0);
  CHECK(f.service->authorize_node(peer_of(r->certificate_pem)));
  CHECK(f.service->enrollments_total() == 1);
}

TEST_CASE("enroll accepts an upper-case node id and issues the lower-case one") {
  ControlFixture f;
  auto node = make_node(KeyType::p256);
  std::string upper = node.id;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto csr = make_csr_pem(node.key.get(), upper);
  REQUIRE(csr);
  auto req = enroll_request(node);
  req.identity.node_id = upper;
  req.csr_pem = *csr;
  auto r = f.service->enroll(f.token(), req);
  REQUIRE_MESSAGE(r, refusal_code(r));
  CHECK(peer_of(r->certificate_pem).subject_cn == node.id);
}

TEST_CASE("enroll refuses an unknown token") {
  ControlFixture f;
  const auto node = make_node();
  auto r = f.enroll(node, "cairn_" + std::string(64, '0'));
  REQUIRE(!r);
  CHECK(r.error().http_status == 401);
  CHECK(r.error().body.code == "token_unknown");
  CHECK(!r.error().body.hint.empty());
  CHECK(refusal_code(f.enroll(node, "")) == "token_unknown");
}

TEST_CASE("enroll refuses an expired token") {
  ControlFixture f;
  const auto token = f.token({{"ttl_s", 60}});
  f.clock.advance(61s);
  auto r = f.enroll(make_node(), token);
  REQUIRE(!r);
  CHECK(r.error().http_status == 401);
  CHECK(r.error().body.code == "token_expired");
}

TEST_CASE("enroll refuses a replayed token") {
  ControlFixture f;
  const auto token = f.token();
  REQUIRE(f.enroll(make_node(), token));
  auto again = f.enroll(make_node(), token);
  REQUIRE(!again);
  CHECK(again.error().http_status == 401);
  CHECK(again.error().body.code == "token_used");
  CHECK(f.service->enrollments_total() == 1);
}

TEST_CASE("enroll refuses a revoked token") {
  ControlFixture f;
  auto created = f.service->admin_create_token(Json::object());
  REQUIRE(created);
  REQUIRE(f.service->admin_revoke_token((*created)["id"].get<std::string>()));
  auto r = f.enroll(make_node(), (*created)["token"].get<std::string>());
  REQUIRE(!r);
  CHECK(r.error().http_status == 401);
  CHECK(r.error().body.code == "token_revoked");
  CHECK(status_of(f.service->admin_revoke_token("no-such-token")) == 404);
}

TEST_CASE("enroll refuses a node other than the one the token expects") {
  ControlFixture f;
  const auto expected = make_node();
  const auto other = make_node();
  const auto token = f.token({{"expect_id", expected.id}, {"uses", 2}});
  auto r = f.enroll(other, token);
  REQUIRE(!r);
  CHECK(r.error().http_status == 403);
  CHECK(r.error().body.code == "identity_mismatch");
  CHECK(f.enroll(expected, token));  // the refusal did not consume a use
}

TEST_CASE("a token with uses=N enrolls N nodes and no more") {
  ControlFixture f;
  const auto token = f.token({{"uses", 3}, {"labels", {{"role", "worker"}}}});
  for (int i = 0; i < 3; ++i) {
    auto r = f.enroll(make_node(), token);
    CHECK_MESSAGE(r, refusal_code(r));
  }
  CHECK(refusal_code(f.enroll(make_node(), token)) == "token_used");
  auto tokens = f.service->admin_list_tokens();
  REQUIRE(tokens);
  REQUIRE((*tokens)["tokens"].size() == 1);
  CHECK((*tokens)["tokens"][0]["uses"] == 3);
  CHECK((*tokens)["tokens"][0]["state"] == "used");
  CHECK(!(*tokens)["tokens"][0].contains("token"));  // the secret is shown only at creation
  CHECK(f.service->enrollments_total() == 3);
}

TEST_CASE("node labels: the token's win, and a node sets only the keys on the allowlist") {
  control::ServiceConfig cfg;
  cfg.node_label_keys = {"zone", "role"};
  ControlFixture f(cfg);
  const auto node = make_node();
  auto req = enroll_request(node);
  req.labels = {{"role", "db"}, {"zone", "a"}, {"tier", "gold"}};
  auto r = f.service->enroll(f.token({{"labels", {{"role", "worker"}}}}), req);
  REQUIRE_MESSAGE(r, refusal_code(r));
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  CHECK((*shown)["labels"]["role"] == "worker");  // the token's, though allowed for nodes
  CHECK((*shown)["labels"]["zone"] == "a");       // allowed, and not set by the token
  CHECK(!(*shown)["labels"].contains("tier"));     // not on the allowlist: dropped
  CHECK((*shown)["labels"].size() == 2);
}

TEST_CASE("node labels: with no allowlist (the default) a node sets none") {
  ControlFixture f;
  const auto node = make_node();
  auto req = enroll_request(node);
  req.labels = {{"role", "db"}};
  REQUIRE(f.service->enroll(f.token({{"labels", {{"rack", "r1"}}}}), req));
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  CHECK((*shown)["labels"] == Json{{"rack", "r1"}});
}

TEST_CASE("admin token creation validates its input") {
  ControlFixture f;
  for (const Json& body : {Json{{"ttl_s", -1}}, Json{{"ttl_s", "60"}}, Json{{"uses", 0}},
                           Json{{"labels", {{"k", 1}}}}, Json{{"expect_id", "nope"}},
                           Json{{"expect_id", "00000000-0000-0000-0000-000000000000"}},
                           Json::array()}) {
    auto r = f.service->admin_create_token(body);
    CAPTURE(body.dump());
    REQUIRE(!r);
    CHECK(r.error().http_status == 400);
    CHECK(r.error().body.code == "invalid_request");
  }
  auto r = f.service->admin_create_token(Json());
  REQUIRE(r);
  CHECK((*r)["max_uses"] == 1);
  CHECK((*r)["token"].get<std::string>().starts_with("cairn_"));
  CHECK((*r)["expires_at"] == format_rfc3339(f.clock.now() + 3600s));
  CHECK((*r)["expect_id"].is_null());
}

TEST_CASE("enroll refuses bad CSRs, each with its own code") {
  ControlFixture f;
  const auto node = make_node();
  const auto other = make_node();

  struct Case {
    const char* name;
    std::string node_id;
    std::string csr;
    const char* code;
  };
  auto rsa = EvpPkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
  REQUIRE(rsa);
  auto rsa_csr = make_csr_pem(rsa.get(), node.id);
  REQUIRE(rsa_csr);
  auto nil_csr = make_csr_pem(node.key.get(), "00000000-0000-0000-0000-000000000000");
  REQUIRE(nil_csr);
  const Case cases[] = {
      {"garbage", node.id, "not a csr", "csr_invalid"},
      {"a certificate instead", node.id, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "csr_invalid"},
      {"altered signature", node.id, tampered_csr(node.csr_pem), "csr_signature"},
      {"RSA key", node.id, *rsa_csr, "csr_key_type"},
      {"CN of another node", node.id, other.csr_pem, "csr_mismatch"},
      {"nil UUID", "00000000-0000-0000-0000-000000000000", *nil_csr, "csr_mismatch"},
      {"node id not a UUID", "node-1", node.csr_pem, "csr_mismatch"},
  };
  const auto token = f.token({{"uses", 100}});
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto req = enroll_request(node);
    req.identity.node_id = c.node_id;
    req.csr_pem = c.csr;
    auto r = f.service->enroll(token, req);
    REQUIRE(!r);
    CHECK(r.error().http_status == 400);
    CHECK(r.error().body.code == c.code);
    CHECK(!r.error().body.message.empty());
  }
  CHECK(f.service->enrollments_total() == 0);
}

TEST_CASE("re-enrollment with a token bound to the id replaces the node's certificate") {
  ControlFixture f;
  const auto node = make_node();
  const auto first = f.enrolled(node);
  const auto second_node = same_id_new_key(node);
  auto r = f.enroll(second_node, f.token({{"expect_id", node.id}}));
  REQUIRE_MESSAGE(r, refusal_code(r));
  const auto second = peer_of(r->certificate_pem);
  CHECK(first.serial_hex != second.serial_hex);
  CHECK(f.service->authorize_node(second));
  auto old = f.service->authorize_node(first);
  REQUIRE(!old);
  CHECK(old.error().http_status == 401);
  CHECK(old.error().body.code == "cert_unknown");
  CHECK(f.service->enrollments_total() == 2);

  // and still so after a restart (the store, not only the cache, knows)
  f.reopen();
  CHECK(f.service->authorize_node(second));
  CHECK(code_of(f.service->authorize_node(first)) == "cert_unknown");
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  CHECK((*shown)["enroll_count"] == 2);
  REQUIRE((*shown)["certificates"].size() == 2);
  CHECK(f.service->enrollments_total() == 2);
  auto nodes = f.service->admin_list_nodes();
  REQUIRE(nodes);
  CHECK((*nodes)["nodes"].size() == 1);
}

TEST_CASE("rotate refuses a CSR for another node and a peer without a known cert") {
  ControlFixture f;
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto r = f.rotate(peer, make_node().csr_pem);
  REQUIRE(!r);
  CHECK(r.error().body.code == "csr_mismatch");
  control::Peer stranger{true, node.id, "ABCDEF"};
  CHECK(code_of(f.rotate(stranger, node.csr_pem)) == "cert_unknown");
  CHECK(status_of(f.service->authorize_node(control::Peer{})) == 401);
}

TEST_CASE("revoking a node makes its certificates fail on the next request") {
  control::ServiceConfig cfg;
  cfg.cert_lifetime = 1h;
  ControlFixture f(cfg);
  const auto node = make_node();
  const auto peer = f.enrolled(node);
  auto rotated = f.rotate(peer, node.csr_pem);
  REQUIRE(rotated);
  const auto rotated_peer = peer_of(rotated->certificate_pem);
  CHECK(f.service->authorize_node(peer));

  auto revoked = f.service->admin_revoke_node(node.id);
  REQUIRE(revoked);
  CHECK((*revoked)["revoked"] == true);
  for (const auto& p : {peer, rotated_peer}) {
    auto a = f.service->authorize_node(p);
    REQUIRE(!a);
    CHECK(a.error().http_status == 403);
    CHECK(a.error().body.code == "node_revoked");
  }
  auto hb = f.beat(peer);
  REQUIRE(!hb);
  CHECK(hb.error().body.code == "node_revoked");
  CHECK(f.state_of(node.id) == "Revoked");
  CHECK(f.service->node_counts().revoked == 1);

  // a fresh token does not bring a revoked node back
  auto again = f.enroll(node, f.token());
  REQUIRE(!again);
  CHECK(again.error().body.code == "node_revoked");

  f.reopen();
  CHECK(code_of(f.service->authorize_node(peer)) == "node_revoked");
  CHECK(code_of(f.service->authorize_node(rotated_peer)) == "node_revoked");
  auto shown = f.service->admin_show_node(node.id);
  REQUIRE(shown);
  for (const auto& c : (*shown)["certificates"]) CHECK(c["status"] == "revoked");
  CHECK(status_of(f.service->admin_revoke_node(make_node().id)) == 404);
  CHECK(status_of(f.service->admin_revoke_node("garbage")) == 404);
}
