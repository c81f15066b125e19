// ControlClient: the agent's side of the /v1 protocol over HttpClient (the lean backend,
// Beast + OpenSSL, unless given another), with the control service verified against the
// pinned CA and, once enrolled, mutual TLS. One client keeps one connection alive across
// heartbeats.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "common/http.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/result.hpp"

namespace cairn::agent {

class ControlClient {
 public:
  // base_url: https://host:port. tls: CA pin, and client cert/key when enrolled.
  ControlClient(std::string base_url, TlsOptions tls,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // The same over a given HttpClient (the service loop's factory; a fake in tests).
  ControlClient(std::string base_url, std::unique_ptr<HttpClient> http,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

  Result<protocol::CertificateResponse> enroll(std::string_view token, const protocol::EnrollRequest& request);
  Result<protocol::CertificateResponse> rotate(const protocol::RotateRequest& request);
  Result<protocol::HeartbeatResponse> heartbeat(const protocol::HeartbeatRequest& request);
  // Tasks and events (issue 13): POST /v1/tasks/lease, /v1/tasks/{id}/extend,
  // /v1/tasks/{id}/complete, /v1/events. A stale fence comes back as Errc::refused (409).
  Result<protocol::LeaseResponse> lease(const protocol::LeaseRequest& request);
  Result<protocol::ExtendResponse> extend(std::string_view task_id, const protocol::ExtendRequest& request);
  Result<protocol::CompleteResponse> complete(std::string_view task_id, const protocol::CompleteRequest& request);
  // tasks (h-taskbatch): POST /v1/tasks/complete, several completions, an answer per item.
  Result<protocol::CompleteBatchResponse> complete_batch(const protocol::CompleteBatchRequest& batch);
  Result<protocol::EventBatchResponse> send_events(const protocol::EventBatch& batch);
  // persist (issue 15): POST /v1/persist/escrow-key (mTLS): this node's escrowed /persist key,
  // as the 32 raw bytes.
  Result<std::string> escrow_key();

  [[nodiscard]] const std::string& base_url() const { return base_url_; }

 private:
  // POSTs JSON; a non-2xx answer becomes an Error carrying the server's code, message and hint.
  Result<std::string> post(std::string_view path, const Json& body, HttpHeaders headers = {});

  std::string base_url_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<HttpClient> http_;
};

// Maps an HTTP status to the agent's exit-code vocabulary (sysexits).
Errc errc_for_http_status(long status);

}  // namespace cairn::agent
