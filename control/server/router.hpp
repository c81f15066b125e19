// Maps an HTTP request (method, target, bearer token, body, verified peer) to one
// ControlService call and its answer to status + JSON. Knows nothing of sockets or TLS.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "control/server/metrics.hpp"
#include "control/service.hpp"

namespace cairn::control::server {

struct RouteRequest {
  std::string_view method;         // "GET", "POST", ...
  std::string_view target;         // "/v1/heartbeat?x=y"
  std::string_view authorization;  // the Authorization header, may be empty
  std::string_view body;
  Peer peer;                         // from the verified client certificate
  std::string_view peer_cert_error;  // a certificate was presented but failed verification
};

struct Reply {
  int status = 200;
  std::string body;
  std::string_view content_type = "application/json";
  bool close = false;  // close the connection after this reply
};

// Called exactly once, possibly on another thread (heartbeat answers after group commit).
using ReplyFn = std::function<void(Reply)>;

// Which metrics slot a target belongs to (the path, without query).
Endpoint classify_endpoint(std::string_view target);

// The JSON error every refusal carries: {"error": {"code", "message", "hint"}}.
Reply error_reply(int status, std::string code, std::string message, std::string hint);

// `body` of the request must stay alive until route() returns (it is decoded synchronously).
void route(ControlService& service, const Metrics& metrics, const RouteRequest& request,
           ReplyFn done);

// "Bearer abc" -> "abc"; anything else -> empty.
std::string_view bearer_token(std::string_view authorization);

}  // namespace cairn::control::server
