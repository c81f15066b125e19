// The routing table of /v1/ (DESIGN.md, "Protocol") and the authorization of each route.
#include "control/server/router.hpp"

#include <utility>

namespace cairn::control::server {
namespace {

constexpr std::string_view kNodeHint =
    "node endpoints need the node certificate issued at enrollment; run 'cairn-agent enroll'";
constexpr std::string_view kAdminHint =
    "use the admin certificate of the state dir (admin.crt/admin.key), e.g. 'cairn-control token list --state DIR'";

std::string dump(const Json& j) {
  // Never throws on invalid UTF-8 in stored labels: replace it.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Reply json_reply(int status, const Json& j) { return Reply{status, dump(j), "application/json", false}; }

Reply from_api_error(const ApiError& e) {
  return Reply{e.http_status, dump(protocol::to_json(e.body)), "application/json", false};
}

template <class T, class ToJson>
Reply from_result(const ApiResult<T>& r, ToJson&& to_json) {
  if (!r) return from_api_error(r.error());
  return json_reply(200, to_json(*r));
}

std::string_view path_of(std::string_view target) {
  const auto q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

Reply method_not_allowed(std::string_view method, std::string_view path, std::string_view allowed) {
  return error_reply(405, "method_not_allowed",
                     std::string(method) + " " + std::string(path) + " is not supported",
                     "use " + std::string(allowed));
}

Reply bad_body(const Error& e) {
  return error_reply(400, "bad_request", e.message,
                     e.hint.empty() ? "send a JSON body as described in DESIGN.md (Protocol)" : e.hint);
}

// The client's certificate, if any, for node endpoints: nullopt means authorized.
std::optional<Reply> check_node_cert(const RouteRequest& r) {
  if (!r.peer_cert_error.empty()) {
    return error_reply(401, "client_cert_untrusted",
                       "client certificate not issued by this cluster's CA: " + std::string(r.peer_cert_error),
                       std::string(kNodeHint));
  }
  if (!r.peer.has_cert) {
    return error_reply(401, "client_cert_required", "no client certificate presented",
                       std::string(kNodeHint));
  }
  if (r.peer.is_admin()) {
    return error_reply(403, "admin_cert_not_a_node",
                       "certificate '" + r.peer.subject_cn + "' is an admin certificate, not a node's",
                       std::string(kNodeHint));
  }
  return std::nullopt;
}

std::optional<Reply> check_admin_cert(const RouteRequest& r) {
  if (!r.peer_cert_error.empty()) {
    return error_reply(401, "client_cert_untrusted",
                       "client certificate not issued by this cluster's CA: " + std::string(r.peer_cert_error),
                       std::string(kAdminHint));
  }
  if (!r.peer.has_cert) {
    return error_reply(401, "client_cert_required", "the admin API needs an admin client certificate",
                       std::string(kAdminHint));
  }
  if (!r.peer.is_admin()) {
    return error_reply(403, "not_admin",
                       "certificate '" + r.peer.subject_cn + "' is not an admin certificate",
                       std::string(kAdminHint));
  }
  return std::nullopt;
}

// "/v1/admin/tokens/ID/revoke" with prefix "/v1/admin/tokens/" -> {"ID", "/revoke"}.
std::pair<std::string_view, std::string_view> split_id(std::string_view rest) {
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return {rest, {}};
  return {rest.substr(0, slash), rest.substr(slash)};
}

Reply route_admin(ControlService& service, const RouteRequest& r, std::string_view path) {
  if (auto refused = check_admin_cert(r)) return std::move(*refused);
  const bool get = r.method == "GET";
  const bool post = r.method == "POST";
  constexpr std::string_view kTokens = "/v1/admin/tokens";
  constexpr std::string_view kNodes = "/v1/admin/nodes";
  auto identity = [](const Json& j) { return j; };

  if (path == kTokens) {
    if (get) return from_result(service.admin_list_tokens(), identity);
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Json body = Json::object();
    if (!r.body.empty()) {
      auto parsed = parse_json(r.body, "token create body");
      if (!parsed) return bad_body(parsed.error());
      body = std::move(*parsed);
    }
    if (!body.is_object()) {
      return error_reply(400, "bad_request", "token create body: expected a JSON object",
                         "send {\"ttl_s\", \"uses\", \"labels\", \"expect_id\"}");
    }
    return from_result(service.admin_create_token(body), identity);
  }
  if (path.starts_with(std::string(kTokens) + "/")) {
    auto [id, tail] = split_id(path.substr(kTokens.size() + 1));
    if (!id.empty() && tail == "/revoke") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_revoke_token(id), identity);
    }
  }
  if (path == kNodes) {
    if (!get) return method_not_allowed(r.method, path, "GET");
    return from_result(service.admin_list_nodes(), identity);
  }
  if (path.starts_with(std::string(kNodes) + "/")) {
    auto [id, tail] = split_id(path.substr(kNodes.size() + 1));
    if (!id.empty() && tail.empty()) {
      if (!get) return method_not_allowed(r.method, path, "GET");
      return from_result(service.admin_show_node(id), identity);
    }
    if (!id.empty() && tail == "/revoke") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_revoke_node(id), identity);
    }
  }
  return error_reply(404, "not_found", "no admin endpoint " + std::string(path),
                     "see 'cairn-control --help' for the admin commands");
}

}  // namespace

Endpoint classify_endpoint(std::string_view target) {
  const auto path = path_of(target);
  if (path == "/v1/heartbeat") return Endpoint::heartbeat;
  if (path == "/v1/enroll") return Endpoint::enroll;
  if (path == "/v1/certificates/rotate") return Endpoint::rotate;
  if (path == "/healthz") return Endpoint::healthz;
  if (path == "/metrics") return Endpoint::metrics;
  if (path.starts_with("/v1/admin/")) return Endpoint::admin;
  return Endpoint::other;
}

Reply error_reply(int status, std::string code, std::string message, std::string hint) {
  protocol::ErrorBody body{std::move(code), std::move(message), std::move(hint)};
  return Reply{status, dump(protocol::to_json(body)), "application/json", false};
}

std::string_view bearer_token(std::string_view authorization) {
  // RFC 6750 2.1: "Bearer" is case-insensitive as an auth-scheme (RFC 7235 2.1).
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return {};
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    const char c = authorization[i];
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != kScheme[i]) return {};
  }
  auto token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

void route(ControlService& service, const Metrics& metrics, const RouteRequest& r, ReplyFn done) {
  const auto path = path_of(r.target);

  if (path == "/v1/heartbeat") {
    if (r.method != "POST") return done(method_not_allowed(r.method, path, "POST"));
    if (auto refused = check_node_cert(r)) return done(std::move(*refused));
    if (auto auth = service.authorize_node(r.peer); !auth) return done(from_api_error(auth.error()));
    auto request = protocol::decode_heartbeat_request(r.body);
    if (!request) return done(bad_body(request.error()));
    service.heartbeat(r.peer, std::move(*request),
                      [done = std::move(done)](ApiResult<protocol::HeartbeatResponse> result) {
                        done(from_result(result, [](const auto& v) { return protocol::to_json(v); }));
                      });
    return;
  }
  if (path == "/v1/enroll") {
    if (r.method != "POST") return done(method_not_allowed(r.method, path, "POST"));
    const auto token = bearer_token(r.authorization);
    if (token.empty()) {
      return done(error_reply(401, "token_missing", "POST /v1/enroll: no 'Authorization: Bearer <token>' header",
                              "create a bootstrap token with 'cairn-control token create' and give it to the agent"));
    }
    auto request = protocol::decode_enroll_request(r.body);
    if (!request) return done(bad_body(request.error()));
    return done(from_result(service.enroll(token, *request), [](const auto& v) { return protocol::to_json(v); }));
  }
  if (path == "/v1/certificates/rotate") {
    if (r.method != "POST") return done(method_not_allowed(r.method, path, "POST"));
    if (auto refused = check_node_cert(r)) return done(std::move(*refused));
    if (auto auth = service.authorize_node(r.peer); !auth) return done(from_api_error(auth.error()));
    auto request = protocol::decode_rotate_request(r.body);
    if (!request) return done(bad_body(request.error()));
    return done(from_result(service.rotate(r.peer, *request), [](const auto& v) { return protocol::to_json(v); }));
  }
  if (path == "/healthz") {
    if (r.method != "GET") return done(method_not_allowed(r.method, path, "GET"));
    return done(Reply{200, "ok", "text/plain; charset=utf-8", false});
  }
  if (path == "/metrics") {
    if (r.method != "GET") return done(method_not_allowed(r.method, path, "GET"));
    return done(Reply{200, metrics.render(&service), "text/plain; version=0.0.4; charset=utf-8", false});
  }
  if (path.starts_with("/v1/admin/")) return done(route_admin(service, r, path));
  return done(error_reply(404, "not_found", "no endpoint " + std::string(r.method) + " " + std::string(path),
                          "the API is under /v1/ (DESIGN.md, Protocol); check the agent and control versions"));
}

}  // namespace cairn::control::server
