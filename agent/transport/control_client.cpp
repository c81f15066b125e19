#include "agent/transport/control_client.hpp"
#include "common/crypto.hpp"  // persist (issue 15): hex_decode

namespace cairn::agent {

Errc errc_for_http_status(long status) {
  // 409: the request conflicts with what control knows (node_exists: an id enrolled by
  // another machine, admin_self_revoke): a policy refusal, not a bug on either side.
  if (status == 401 || status == 403 || status == 409) return Errc::refused;
  if (status == 429 || status == 503) return Errc::temporary;
  if (status >= 500) return Errc::unavailable;
  if (status == 400 || status == 413 || status == 422) return Errc::data;
  return Errc::internal;  // 404, 405: we and the server disagree on the protocol
}

ControlClient::ControlClient(std::string base_url, TlsOptions tls, std::chrono::milliseconds timeout)
    : ControlClient(std::move(base_url), make_lean_http_client(std::move(tls)), timeout) {}

ControlClient::ControlClient(std::string base_url, std::unique_ptr<HttpClient> http, std::chrono::milliseconds timeout)
    : base_url_(std::move(base_url)), timeout_(timeout), http_(std::move(http)) {
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
}

Result<std::string> ControlClient::post(std::string_view path, const Json& body, HttpHeaders headers) {
  HttpRequest req;
  req.method = "POST";
  req.url = base_url_ + std::string(path);
  req.headers = std::move(headers);
  req.headers.emplace_back("Content-Type", "application/json");
  req.body = dump_json(body);
  req.protocols = "https";  // tokens and node state never travel in clear
  req.connect_timeout = std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(5));
  req.total_timeout = timeout_;
  auto resp = http_->send(req);
  if (!resp) return fail(resp.error());
  if (resp->status >= 200 && resp->status < 300) return std::move(resp->body);

  const Errc code = errc_for_http_status(resp->status);
  auto err = protocol::decode_error_body(resp->body);
  if (!err) {
    return fail(code, "POST " + req.url + ": HTTP " + std::to_string(resp->status) + " without an error body",
                "check that the URL points at cairn-control");
  }
  return fail(code, "POST " + req.url + ": " + err->code + ": " + err->message, err->hint);
}

Result<protocol::CertificateResponse> ControlClient::enroll(std::string_view token,
                                                            const protocol::EnrollRequest& request) {
  auto body = post("/v1/enroll", protocol::to_json(request), {{"Authorization", "Bearer " + std::string(token)}});
  if (!body) return fail(body.error());
  return protocol::decode_certificate_response(*body);
}

Result<protocol::CertificateResponse> ControlClient::rotate(const protocol::RotateRequest& request) {
  auto body = post("/v1/certificates/rotate", protocol::to_json(request));
  if (!body) return fail(body.error());
  return protocol::decode_certificate_response(*body);
}

Result<protocol::HeartbeatResponse> ControlClient::heartbeat(const protocol::HeartbeatRequest& request) {
  auto body = post("/v1/heartbeat", protocol::to_json(request));
  if (!body) return fail(body.error());
  return protocol::decode_heartbeat_response(*body);
}

Result<protocol::LeaseResponse> ControlClient::lease(const protocol::LeaseRequest& request) {
  auto body = post("/v1/tasks/lease", protocol::to_json(request));
  if (!body) return fail(body.error());
  return protocol::decode_lease_response(*body);
}

namespace {
// A task id goes into a URL path: only the characters of a UUID are accepted.
bool plain_id(std::string_view id) {
  return !id.empty() && id.size() <= 64 && id.find_first_not_of("0123456789abcdefABCDEF-") == std::string_view::npos;
}
}  // namespace

Result<protocol::ExtendResponse> ControlClient::extend(std::string_view task_id, const protocol::ExtendRequest& request) {
  if (!plain_id(task_id)) return fail(Errc::data, "task id '" + std::string(task_id.substr(0, 80)) + "': not a UUID");
  auto body = post("/v1/tasks/" + std::string(task_id) + "/extend", protocol::to_json(request));
  if (!body) return fail(body.error());
  return protocol::decode_extend_response(*body);
}

Result<protocol::CompleteResponse> ControlClient::complete(std::string_view task_id,
                                                           const protocol::CompleteRequest& request) {
  if (!plain_id(task_id)) return fail(Errc::data, "task id '" + std::string(task_id.substr(0, 80)) + "': not a UUID");
  auto body = post("/v1/tasks/" + std::string(task_id) + "/complete", protocol::to_json(request));
  if (!body) return fail(body.error());
  return protocol::decode_complete_response(*body);
}

// tasks (h-taskbatch)
Result<protocol::CompleteBatchResponse> ControlClient::complete_batch(const protocol::CompleteBatchRequest& batch) {
  auto body = post("/v1/tasks/complete", protocol::to_json(batch));
  if (!body) return fail(body.error());
  return protocol::decode_complete_batch_response(*body);
}

Result<protocol::EventBatchResponse> ControlClient::send_events(const protocol::EventBatch& batch) {
  auto body = post("/v1/events", protocol::to_json(batch));
  if (!body) return fail(body.error());
  return protocol::decode_event_batch_response(*body);
}

// persist (issue 15)
Result<std::string> ControlClient::escrow_key() {
  auto body = post("/v1/persist/escrow-key", Json::object());
  if (!body) return fail(body.error());
  auto j = parse_json(*body, "escrow-key answer");
  if (!j) return fail(j.error());
  auto it = j->find("key");
  if (!j->is_object() || it == j->end() || !it->is_string()) {
    return fail(Errc::data, "POST " + base_url_ + "/v1/persist/escrow-key: answer without a \"key\"",
                "check that the control service is of the same version");
  }
  auto key = hex_decode(it->get<std::string>());
  if (!key || key->size() != 32) {
    return fail(Errc::data, "POST " + base_url_ + "/v1/persist/escrow-key: \"key\" is not 32 bytes in hex");
  }
  return key;
}

}  // namespace cairn::agent
