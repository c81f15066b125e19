// The routing table of /v1/ and its authorization, on a real service behind a wrapper that
// counts the authorization calls: each request is authorized once, by the router.
#include <doctest/doctest.h>

#include <future>
#include <string>

#include "control/server/router.hpp"
#include "tests/support/skip.hpp"
#include "tests/unit/control/control_fixture.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace cairn::control;
using namespace cairn::control::server;

namespace {

class CountingService final : public ControlService {
 public:
  explicit CountingService(ControlService& inner) : inner_(inner) {}
  int node_auths = 0;
  int admin_auths = 0;

  ApiResult<AuthorizedNode> authorize_node(const Peer& p) override {
    ++node_auths;
    return inner_.authorize_node(p);
  }
  ApiResult<AuthorizedAdmin> authorize_admin(const Peer& p) override {
    ++admin_auths;
    return inner_.authorize_admin(p);
  }
  ApiResult<protocol::CertificateResponse> enroll(std::string_view t, const protocol::EnrollRequest& r) override {
    return inner_.enroll(t, r);
  }
  ApiResult<protocol::CertificateResponse> rotate(const AuthorizedNode& n, const protocol::RotateRequest& r) override {
    return inner_.rotate(n, r);
  }
  void heartbeat(const AuthorizedNode& n, protocol::HeartbeatRequest r, HeartbeatDone d) override {
    inner_.heartbeat(n, std::move(r), std::move(d));
  }
  ApiResult<Json> admin_create_token(const Json& b) override { return inner_.admin_create_token(b); }
  ApiResult<Json> admin_list_tokens() override { return inner_.admin_list_tokens(); }
  ApiResult<Json> admin_revoke_token(std::string_view id) override { return inner_.admin_revoke_token(id); }
  ApiResult<Json> admin_list_nodes() override { return inner_.admin_list_nodes(); }
  ApiResult<Json> admin_show_node(std::string_view id) override { return inner_.admin_show_node(id); }
  ApiResult<Json> admin_revoke_node(std::string_view id) override { return inner_.admin_revoke_node(id); }
  ApiResult<Json> admin_allow_reenroll(std::string_view id) override { return inner_.admin_allow_reenroll(id); }
  ApiResult<Json> admin_list_events(const EventFilter& f) override {
    last_filter = f;
    return inner_.admin_list_events(f);
  }
  ApiResult<Json> admin_create_admin(const Json& b) override { return inner_.admin_create_admin(b); }
  ApiResult<Json> admin_list_admins() override { return inner_.admin_list_admins(); }
  ApiResult<Json> admin_revoke_admin(const AuthorizedAdmin& by, std::string_view n) override {
    return inner_.admin_revoke_admin(by, n);
  }
  // tasks and events (issue 13): forwarded as they are
  ApiResult<protocol::LeaseResponse> lease_tasks(const AuthorizedNode& n, const protocol::LeaseRequest& r) override {
    return inner_.lease_tasks(n, r);
  }
  ApiResult<protocol::ExtendResponse> extend_task(const AuthorizedNode& n, std::string_view id,
                                                  const protocol::ExtendRequest& r) override {
    return inner_.extend_task(n, id, r);
  }
  ApiResult<protocol::CompleteResponse> complete_task(const AuthorizedNode& n, std::string_view id,
                                                      const protocol::CompleteRequest& r) override {
    return inner_.complete_task(n, id, r);
  }
  ApiResult<protocol::EventBatchResponse> post_events(const AuthorizedNode& n, const protocol::EventBatch& b) override {
    return inner_.post_events(n, b);
  }
  ApiResult<Json> admin_submit_task(const Json& b) override { return inner_.admin_submit_task(b); }
  ApiResult<Json> admin_list_tasks(const TaskFilter& f) override { return inner_.admin_list_tasks(f); }
  ApiResult<Json> admin_show_task(std::string_view id) override { return inner_.admin_show_task(id); }
  ApiResult<Json> admin_cancel_task(std::string_view id) override { return inner_.admin_cancel_task(id); }
  void sweep_tasks() override { inner_.sweep_tasks(); }
  ApiResult<Json> persist_escrow_key(const AuthorizedNode& n) override { return inner_.persist_escrow_key(n); }
  NodeCounts node_counts() override { return inner_.node_counts(); }
  std::int64_t enrollments_total() override { return inner_.enrollments_total(); }
  void sweep_liveness() override { inner_.sweep_liveness(); }

  EventFilter last_filter;

 private:
  ControlService& inner_;
};

struct RouterFixture {
  ControlFixture f;
  CountingService service{*f.service};
  Metrics metrics;

  Reply call(std::string_view method, std::string_view target, std::string_view body = {}, Peer peer = {},
             std::string_view authorization = {}, std::string_view cert_error = {}) {
    RouteRequest r{method, target, authorization, body, std::move(peer), cert_error};
    std::promise<Reply> promise;
    auto future = promise.get_future();
    route(service, metrics, r, [&](Reply reply) { promise.set_value(std::move(reply)); });
    return future.get();
  }
};

std::string code(const Reply& r) {
  auto e = protocol::decode_error_body(r.body);
  return e ? e->code : "(no error: " + r.body.substr(0, 80) + ")";
}

}  // namespace

TEST_CASE("router: unknown paths are 404, wrong methods 405, both with a JSON error") {
  RouterFixture t;
  struct Case {
    const char* method;
    const char* target;
    int status;
    const char* code;
  };
  const Case cases[] = {
      {"GET", "/nope", 404, "not_found"},
      {"GET", "/v1/heartbeat", 405, "method_not_allowed"},
      {"GET", "/v1/enroll", 405, "method_not_allowed"},
      {"PUT", "/v1/certificates/rotate", 405, "method_not_allowed"},
      {"POST", "/healthz", 405, "method_not_allowed"},
      {"POST", "/metrics", 405, "method_not_allowed"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.method);
    CAPTURE(c.target);
    const auto r = t.call(c.method, c.target);
    CHECK(r.status == c.status);
    CHECK(code(r) == c.code);
    CHECK(r.content_type == "application/json");
  }
  const auto health = t.call("GET", "/healthz?probe=1");
  CHECK(health.status == 200);
  CHECK(health.body == "ok");
  const auto metrics = t.call("GET", "/metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.body.find("cairn_nodes{state=\"ready\"} 0") != std::string::npos);
}

TEST_CASE("router: node endpoints authorize once per request, in the router") {
  RouterFixture t;
  const auto node = make_node();
  const auto peer = t.f.enrolled(node);

  auto hb = t.call("POST", "/v1/heartbeat", dump_json(protocol::to_json(sample_heartbeat())), peer);
  CHECK(hb.status == 200);
  CHECK(t.service.node_auths == 1);
  auto decoded = protocol::decode_heartbeat_response(hb.body);
  REQUIRE(decoded);
  CHECK(decoded->next_interval_s == 30);

  auto rot = t.call("POST", "/v1/certificates/rotate", dump_json(protocol::to_json(protocol::RotateRequest{node.csr_pem})), peer);
  CHECK(rot.status == 200);
  CHECK(t.service.node_auths == 2);
  CHECK(protocol::decode_certificate_response(rot.body));

  // refusals: decided by the one authorization, before the body is read
  struct Case {
    const char* name;
    Peer peer;
    const char* cert_error;
    int status;
    const char* code;
  };
  const Case cases[] = {
      {"no certificate", Peer{}, "", 401, "client_cert_required"},
      {"untrusted certificate", Peer{}, "unable to get local issuer certificate", 401, "client_cert_untrusted"},
      {"admin certificate", t.f.state_admin(), "", 403, "admin_cert_not_a_node"},
      {"unknown serial", Peer{true, node.id, "ABCDEF"}, "", 401, "cert_unknown"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const auto r = t.call("POST", "/v1/heartbeat", "not json", c.peer, {}, c.cert_error);
    CHECK(r.status == c.status);
    CHECK(code(r) == c.code);
  }
  const auto bad = t.call("POST", "/v1/heartbeat", "not json", peer);
  CHECK(bad.status == 400);
  CHECK(code(bad) == "bad_request");
}

TEST_CASE("router: enroll needs a bearer token and a valid body") {
  RouterFixture t;
  CHECK(code(t.call("POST", "/v1/enroll", "{}")) == "token_missing");
  CHECK(code(t.call("POST", "/v1/enroll", "{}", {}, "Basic abc")) == "token_missing");
  CHECK(code(t.call("POST", "/v1/enroll", "{}", {}, "Bearer abc")) == "bad_request");
  const auto node = make_node();
  const auto token = t.f.token();
  const auto ok = t.call("POST", "/v1/enroll", dump_json(protocol::to_json(enroll_request(node))), {}, "bearer " + token);
  CHECK(ok.status == 200);
  CHECK(t.service.node_auths == 0);
}

TEST_CASE("bearer_token: the scheme is case-insensitive, spaces trimmed, anything else empty") {
  const std::pair<const char*, const char*> cases[] = {
      {"Bearer abc", "abc"}, {"bearer abc", "abc"}, {"BEARER  abc  ", "abc"},
      {"Bearer ", ""},       {"Bearer", ""},        {"Basic abc", ""},
      {"", ""},              {"Bearerabc", ""},
  };
  for (const auto& [header, token] : cases) {
    CAPTURE(header);
    CHECK(bearer_token(header) == token);
  }
}

TEST_CASE("router: the admin API needs a known admin certificate, authorized once") {
  RouterFixture t;
  const auto admin = t.f.state_admin();
  const auto node_peer = t.f.enrolled(make_node());
  CHECK(code(t.call("GET", "/v1/admin/nodes", {}, node_peer)) == "not_admin");
  CHECK(code(t.call("GET", "/v1/admin/nodes")) == "client_cert_required");
  CHECK(code(t.call("GET", "/v1/admin/nodes", {}, Peer{true, "admin:admin", "ABCDEF"})) == "admin_cert_unknown");
  CHECK(code(t.call("GET", "/v1/admin/nodes", {}, admin, {}, "certificate has expired")) == "client_cert_untrusted");

  t.service.admin_auths = 0;
  const auto list = t.call("GET", "/v1/admin/nodes", {}, admin);
  CHECK(list.status == 200);
  CHECK(t.service.admin_auths == 1);

  struct Case {
    const char* method;
    std::string target;
    std::string body;
    int status;
  };
  const std::string id = node_peer.subject_cn;
  const Case cases[] = {
      {"GET", "/v1/admin/tokens", "", 200},
      {"POST", "/v1/admin/tokens", "", 200},
      {"POST", "/v1/admin/tokens", "[1]", 400},
      {"POST", "/v1/admin/tokens", "{bad", 400},
      {"DELETE", "/v1/admin/tokens", "", 405},
      {"GET", "/v1/admin/nodes/" + id, "", 200},
      {"POST", "/v1/admin/nodes/" + id + "/allow-reenroll", "", 200},
      {"GET", "/v1/admin/nodes/" + id + "/allow-reenroll", "", 405},
      {"GET", "/v1/admin/events", "", 200},
      {"POST", "/v1/admin/events", "", 405},
      {"GET", "/v1/admin/admins", "", 200},
      {"POST", "/v1/admin/admins", "{}", 400},
      {"POST", "/v1/admin/admins/admin/revoke", "", 409},  // itself
      {"GET", "/v1/admin/nope", "", 404},
      {"POST", "/v1/admin/nodes/" + id + "/revoke", "", 200},
  };
  for (const auto& c : cases) {
    CAPTURE(c.method);
    CAPTURE(c.target);
    CHECK(t.call(c.method, c.target, c.body, admin).status == c.status);
  }
}

TEST_CASE("router: the events query takes node, since_ms and limit, and refuses anything else") {
  RouterFixture t;
  const auto admin = t.f.state_admin();
  const std::string id = make_node().id;
  auto ok = t.call("GET", "/v1/admin/events?node=" + id + "&since_ms=1234&limit=5", {}, admin);
  CHECK(ok.status == 200);
  REQUIRE(t.service.last_filter.node_id);
  CHECK(*t.service.last_filter.node_id == id);
  CHECK(t.service.last_filter.since_ms == 1234);
  CHECK(t.service.last_filter.limit == 5);
  for (const char* bad : {"/v1/admin/events?since_ms=-1", "/v1/admin/events?since_ms=1e3", "/v1/admin/events?limit=",
                          "/v1/admin/events?colour=red", "/v1/admin/events?node", "/v1/admin/events?node=nope"}) {
    CAPTURE(bad);
    const auto r = t.call("GET", bad, {}, admin);
    CHECK(r.status == 400);
  }
}

TEST_CASE("classify_endpoint maps each path (query ignored) to its metrics slot") {
  const std::pair<const char*, Endpoint> cases[] = {
      {"/v1/heartbeat", Endpoint::heartbeat},  {"/v1/heartbeat?x=1", Endpoint::heartbeat},
      {"/v1/enroll", Endpoint::enroll},        {"/v1/certificates/rotate", Endpoint::rotate},
      {"/healthz", Endpoint::healthz},         {"/metrics", Endpoint::metrics},
      {"/v1/admin/nodes", Endpoint::admin},    {"/v1/heartbeats", Endpoint::other},
      {"/", Endpoint::other},
  };
  for (const auto& [target, endpoint] : cases) {
    CAPTURE(target);
    CHECK(classify_endpoint(target) == endpoint);
  }
}

// persist (issue 15)
TEST_CASE("router: the escrow key is for the node's own certificate only, the same on every call") {
  RouterFixture t;
  CHECK(t.call("GET", "/v1/persist/escrow-key").status == 405);
  const auto none = t.call("POST", "/v1/persist/escrow-key", "{}");
  CHECK(none.status == 401);
  CHECK(code(none) == "client_cert_required");
  const auto admin = t.call("POST", "/v1/persist/escrow-key", "{}", t.f.state_admin());
  CHECK(admin.status == 403);

  const auto node = make_node();
  const auto peer = t.f.enrolled(node);
  const auto first = t.call("POST", "/v1/persist/escrow-key", "{}", peer);
  if (first.status == 500 && first.body.find("not built yet") != std::string::npos) {
    CAIRN_SKIP("the SQLite store has no escrow bodies in this branch yet (h-ctasks writes them)");
  }
  REQUIRE(first.status == 200);
  auto j = parse_json(first.body, "escrow answer");
  REQUIRE(j.has_value());
  CHECK((*j)["node_id"] == node.id);
  CHECK((*j)["key"].get<std::string>().size() == 64);
  const auto second = t.call("POST", "/v1/persist/escrow-key", "{}", peer);
  REQUIRE(second.status == 200);
  CHECK(parse_json(second.body, "escrow answer")->at("key") == (*j)["key"]);
}
