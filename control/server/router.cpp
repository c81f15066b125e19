// The routing table of /v1/ (DESIGN.md, "Protocol") and the authorization of each route.
#include "control/server/router.hpp"

#include <utility>

namespace cairn::control::server {
namespace {

constexpr std::string_view kNodeHint =
    "node endpoints need the node certificate issued at enrollment; run 'cairn-agent enroll'";
constexpr std::string_view kAdminHint =
    "use the admin certificate of the state dir (admin.crt/admin.key), e.g. 'cairn-control token list --state DIR'";

std::string dump(const Json& j) { return dump_json(j); }

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

// A certificate was presented but did not verify against the cluster CA.
std::optional<Reply> untrusted_cert(const RouteRequest& r, std::string_view hint) {
  if (r.peer_cert_error.empty()) return std::nullopt;
  return error_reply(401, "client_cert_untrusted",
                     "client certificate not issued by this cluster's CA: " + std::string(r.peer_cert_error),
                     std::string(hint));
}

// "/v1/admin/tokens/ID/revoke" with prefix "/v1/admin/tokens/" -> {"ID", "/revoke"}.
std::pair<std::string_view, std::string_view> split_id(std::string_view rest) {
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return {rest, {}};
  return {rest.substr(0, slash), rest.substr(slash)};
}

// A JSON object body (empty: {}); `what` names it in the error.
std::optional<Json> object_body(const RouteRequest& r, std::string_view what, std::string_view fields,
                                Reply& refused) {
  Json body = Json::object();
  if (!r.body.empty()) {
    auto parsed = parse_json(r.body, what);
    if (!parsed) {
      refused = bad_body(parsed.error());
      return std::nullopt;
    }
    body = std::move(*parsed);
  }
  if (!body.is_object()) {
    refused = error_reply(400, "bad_request", std::string(what) + ": expected a JSON object",
                          "send " + std::string(fields));
    return std::nullopt;
  }
  return body;
}

// "node=ID&since_ms=123&limit=5" of GET /v1/admin/events. Values are UUIDs and integers, so
// no percent-decoding is needed; anything else is refused.
std::optional<Reply> parse_event_filter(std::string_view target, EventFilter& filter) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  auto bad = [](std::string_view what) {
    return error_reply(400, "bad_request", "events query: " + std::string(what.substr(0, 80)),
                       "use ?node=UUID&since_ms=UNIX_MS&limit=N&after=SEQ");
  };
  auto number = [](std::string_view v, std::int64_t& out) {
    if (v.empty() || v.size() > 18) return false;
    std::int64_t n = 0;
    for (char c : v) {
      if (c < '0' || c > '9') return false;
      n = n * 10 + (c - '0');
    }
    out = n;
    return true;
  };
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto item = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) return bad("'" + std::string(item) + "' is not key=value");
    const auto key = item.substr(0, eq);
    const auto value = item.substr(eq + 1);
    if (key == "node") {
      filter.node_id = std::string(value);
    } else if (key == "since_ms") {
      if (!number(value, filter.since_ms)) return bad("since_ms: not a whole number of milliseconds");
    } else if (key == "limit") {
      if (!number(value, filter.limit)) return bad("limit: not a whole number");
    } else if (key == "after") {
      std::int64_t after = 0;
      if (!number(value, after)) return bad("after: not a whole number (an event seq)");
      filter.after_seq = after;
    } else {
      return bad("unknown parameter '" + std::string(key) + "'");
    }
  }
  return std::nullopt;
}

// "state=queued&node=ID&limit=5" of GET /v1/admin/tasks (state names, UUIDs, integers: no
// percent-decoding needed; anything else is refused).
std::optional<Reply> parse_task_filter(std::string_view target, TaskFilter& filter) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  auto bad = [](std::string_view what) {
    return error_reply(400, "bad_request", "tasks query: " + std::string(what.substr(0, 80)),
                       "use ?state=STATE&node=UUID&limit=N");
  };
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto item = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) return bad("'" + std::string(item) + "' is not key=value");
    const auto key = item.substr(0, eq);
    const auto value = item.substr(eq + 1);
    if (key == "state") {
      filter.state = std::string(value.substr(0, 64));
    } else if (key == "node") {
      filter.node_id = std::string(value.substr(0, 64));
    } else if (key == "limit") {
      if (value.empty() || value.size() > 9 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return bad("limit: not a whole number");
      }
      filter.limit = std::stoll(std::string(value));
    } else {
      return bad("unknown parameter '" + std::string(key) + "'");
    }
  }
  return std::nullopt;
}

// Task and event endpoints of a node (issue 13): POST /v1/tasks/lease,
// /v1/tasks/{id}/extend, /v1/tasks/{id}/complete and POST /v1/events.
Reply route_node_tasks(ControlService& service, const RouteRequest& r, std::string_view path) {
  if (r.method != "POST") return method_not_allowed(r.method, path, "POST");
  if (auto refused = untrusted_cert(r, kNodeHint)) return std::move(*refused);
  auto node = service.authorize_node(r.peer);
  if (!node) return from_api_error(node.error());
  auto to_json = [](const auto& v) { return protocol::to_json(v); };
  if (path == "/v1/events") {
    auto batch = protocol::decode_event_batch(r.body);
    if (!batch) return bad_body(batch.error());
    return from_result(service.post_events(*node, *batch), to_json);
  }
  if (path == "/v1/tasks/lease") {
    auto request = protocol::decode_lease_request(r.body);
    if (!request) return bad_body(request.error());
    return from_result(service.lease_tasks(*node, *request), to_json);
  }
  // task batches (h-taskbatch): several completions in one request
  if (path == "/v1/tasks/complete") {
    auto request = protocol::decode_complete_batch_request(r.body);
    if (!request) return bad_body(request.error());
    return from_result(service.complete_tasks(*node, *request), to_json);
  }
  constexpr std::string_view kTasks = "/v1/tasks/";
  auto [id, tail] = split_id(path.substr(kTasks.size()));
  if (!id.empty() && tail == "/extend") {
    auto request = protocol::decode_extend_request(r.body);
    if (!request) return bad_body(request.error());
    return from_result(service.extend_task(*node, id, *request), to_json);
  }
  if (!id.empty() && tail == "/complete") {
    auto request = protocol::decode_complete_request(r.body);
    if (!request) return bad_body(request.error());
    return from_result(service.complete_task(*node, id, *request), to_json);
  }
  return error_reply(404, "not_found", "no endpoint POST " + std::string(path),
                     "tasks are leased at /v1/tasks/lease and reported at /v1/tasks/{id}/extend|complete");
}

Reply route_admin(ControlService& service, const RouteRequest& r, std::string_view path) {
  if (auto refused = untrusted_cert(r, kAdminHint)) return std::move(*refused);
  auto admin = service.authorize_admin(r.peer);
  if (!admin) return from_api_error(admin.error());
  const bool get = r.method == "GET";
  const bool post = r.method == "POST";
  constexpr std::string_view kTokens = "/v1/admin/tokens";
  constexpr std::string_view kNodes = "/v1/admin/nodes";
  constexpr std::string_view kAdmins = "/v1/admin/admins";
  auto identity = [](const Json& j) { return j; };

  if (path == kTokens) {
    if (get) return from_result(service.admin_list_tokens(), identity);
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Reply refused;
    auto body = object_body(r, "token create body", "{\"ttl_s\", \"uses\", \"labels\", \"expect_id\"}", refused);
    if (!body) return refused;
    return from_result(service.admin_create_token(*body), identity);
  }
  if (path == "/v1/admin/events") {
    if (!get) return method_not_allowed(r.method, path, "GET");
    EventFilter filter;
    if (auto refused = parse_event_filter(r.target, filter)) return std::move(*refused);
    return from_result(service.admin_list_events(filter), identity);
  }
  if (path == kAdmins) {
    if (get) return from_result(service.admin_list_admins(), identity);
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Reply refused;
    auto body = object_body(r, "admin create body", "{\"name\", \"csr\"}", refused);
    if (!body) return refused;
    return from_result(service.admin_create_admin(*body), identity);
  }
  if (path.starts_with(std::string(kAdmins) + "/")) {
    auto [name, tail] = split_id(path.substr(kAdmins.size() + 1));
    if (!name.empty() && tail == "/revoke") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_revoke_admin(*admin, name), identity);
    }
  }
  if (path.starts_with(std::string(kTokens) + "/")) {
    auto [id, tail] = split_id(path.substr(kTokens.size() + 1));
    if (!id.empty() && tail == "/revoke") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_revoke_token(id), identity);
    }
  }
  // task batches (h-taskbatch): `task submit --batch FILE`
  if (path == "/v1/admin/tasks/batch") {
    if (!post) return method_not_allowed(r.method, path, "POST");
    Reply refused;
    auto body = object_body(r, "task batch body", "{\"tasks\": [{\"kind\", \"args\", ...}]}", refused);
    if (!body) return refused;
    return from_result(service.admin_submit_tasks(*body), identity);
  }
  // tasks (issue 13)
  constexpr std::string_view kTasks = "/v1/admin/tasks";
  if (path == kTasks) {
    if (get) {
      TaskFilter filter;
      if (auto refused = parse_task_filter(r.target, filter)) return std::move(*refused);
      return from_result(service.admin_list_tasks(filter), identity);
    }
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Reply refused;
    auto body = object_body(r, "task submit body", "{\"kind\", \"args\", ...}", refused);
    if (!body) return refused;
    return from_result(service.admin_submit_task(*body), identity);
  }
  if (path.starts_with(std::string(kTasks) + "/")) {
    auto [id, tail] = split_id(path.substr(kTasks.size() + 1));
    if (!id.empty() && tail.empty()) {
      if (!get) return method_not_allowed(r.method, path, "GET");
      return from_result(service.admin_show_task(id), identity);
    }
    if (!id.empty() && tail == "/cancel") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_cancel_task(id), identity);
    }
  }
  // modules (h-modpolicy): the signed module trust policy
  if (path == "/v1/admin/modules/policy") {
    if (get) return from_result(service.admin_show_module_policy(), identity);
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Reply refused;
    auto body = object_body(r, "module policy body", "{\"policy\": <signed policy document>}", refused);
    if (!body) return refused;
    return from_result(service.admin_set_module_policy(*body), identity);
  }
  // modules (h-modctl): the module catalog and assignments
  constexpr std::string_view kModules = "/v1/admin/modules";
  constexpr std::string_view kAssignments = "/v1/admin/modules/assignments";
  if (path == kModules) {
    if (get) return from_result(service.admin_list_modules(), identity);
    if (!post) return method_not_allowed(r.method, path, "GET or POST");
    Reply refused;
    auto body = object_body(r, "module add body", "{\"reference\", \"manifest\", \"signatures\", \"trust_keys\"}", refused);
    if (!body) return refused;
    return from_result(service.admin_add_module(*body), identity);
  }
  if (path == kAssignments) {
    if (!post) return method_not_allowed(r.method, path, "POST");
    Reply refused;
    auto body = object_body(r, "module assign body", "{\"module\": \"NAME@VERSION\", \"node\" | \"selector\"}", refused);
    if (!body) return refused;
    return from_result(service.admin_assign_module(*body), identity);
  }
  if (path.starts_with(std::string(kAssignments) + "/")) {
    auto [id, tail] = split_id(path.substr(kAssignments.size() + 1));
    if (!id.empty() && tail == "/delete") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_unassign_module(id), identity);
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
    if (!id.empty() && tail == "/allow-reenroll") {
      if (!post) return method_not_allowed(r.method, path, "POST");
      return from_result(service.admin_allow_reenroll(id), identity);
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
    if (auto refused = untrusted_cert(r, kNodeHint)) return done(std::move(*refused));
    auto node = service.authorize_node(r.peer);  // decided once, here, for the whole request
    if (!node) return done(from_api_error(node.error()));
    auto request = protocol::decode_heartbeat_request(r.body);
    if (!request) return done(bad_body(request.error()));
    service.heartbeat(*node, std::move(*request),
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
    if (auto refused = untrusted_cert(r, kNodeHint)) return done(std::move(*refused));
    auto node = service.authorize_node(r.peer);
    if (!node) return done(from_api_error(node.error()));
    auto request = protocol::decode_rotate_request(r.body);
    if (!request) return done(bad_body(request.error()));
    return done(from_result(service.rotate(*node, *request), [](const auto& v) { return protocol::to_json(v); }));
  }
  if (path == "/v1/persist/escrow-key") {  // persist (issue 15): the node's own escrowed key
    if (r.method != "POST") return done(method_not_allowed(r.method, path, "POST"));
    if (auto refused = untrusted_cert(r, kNodeHint)) return done(std::move(*refused));
    auto node = service.authorize_node(r.peer);
    if (!node) return done(from_api_error(node.error()));
    return done(from_result(service.persist_escrow_key(*node), [](const Json& j) { return j; }));
  }
  if (path == "/healthz") {
    if (r.method != "GET") return done(method_not_allowed(r.method, path, "GET"));
    return done(Reply{200, "ok", "text/plain; charset=utf-8", false});
  }
  if (path == "/metrics") {
    if (r.method != "GET") return done(method_not_allowed(r.method, path, "GET"));
    return done(Reply{200, metrics.render(&service), "text/plain; version=0.0.4; charset=utf-8", false});
  }
  if (path == "/v1/events" || path.starts_with("/v1/tasks/")) return done(route_node_tasks(service, r, path));
  if (path.starts_with("/v1/admin/")) return done(route_admin(service, r, path));
  return done(error_reply(404, "not_found", "no endpoint " + std::string(r.method) + " " + std::string(path),
                          "the API is under /v1/ (DESIGN.md, Protocol); check the agent and control versions"));
}

}  // namespace cairn::control::server
