// HttpClient: the one seam for outbound HTTP(S): cloud metadata, the control service, the
// OCI registry. Two backends: libcurl (common/http/curl.cpp, dlopen()ed on first use) for
// downloads and metadata, and a lean one on Boost.Beast + OpenSSL (common/http/lean.cpp) for
// the control connection, which a long-running agent holds without libcurl's twenty
// libraries in memory. Tests cross both with real servers on 127.0.0.1.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"

namespace cairn {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  HttpHeaders headers;
  std::string body;
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds total_timeout{10000};
  std::size_t max_response_bytes = 1 << 20;  // a larger answer is an error, never truncated
  std::string protocols = "http,https";      // schemes allowed ("https": never in clear)
  // Streaming download (OCI blobs): when set, the body of a 2xx answer goes to the sink chunk
  // by chunk (with the status, so 200 and 206 can differ) instead of into HttpResponse::body;
  // max_response_bytes still caps it. Returning false aborts the transfer (Errc::io).
  // Bodies of other statuses still go to HttpResponse::body.
  std::function<bool(long status, std::string_view chunk)> body_sink{};
  // A transfer slower than 1 KiB/s for this long is aborted (Errc::unavailable); 0: off.
  std::chrono::seconds stall_timeout{0};
};

struct HttpResponse {
  long status = 0;
  HttpHeaders headers;  // names lower-cased
  std::string body;
  [[nodiscard]] std::optional<std::string> header(std::string_view lower_name) const;
};

struct TlsOptions {
  std::string ca_file;  // PEM bundle the server must chain to; empty = system store
  // Instead of a bundle: the SHA-256 (hex, of the DER) of the CA certificate the server must
  // chain to. The server presents that CA in its chain; the chain is verified against it
  // alone, and the host name is checked as usual. Lets an agent enroll knowing only the
  // fingerprint `cairn-control init` printed.
  std::string ca_fingerprint_sha256;
  std::string client_cert_file;  // mTLS: PEM certificate (+ chain)
  std::string client_key_file;   // mTLS: PEM private key
};

class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Errors: Errc::unavailable (connect, timeout, reset), Errc::refused (TLS peer not
  // verified), Errc::data (answer over max_response_bytes). Any HTTP status is a response.
  virtual Result<HttpResponse> send(const HttpRequest& request) = 0;
};

// A client that keeps its connection alive between calls. Not thread-safe: one per thread.
// libcurl: every feature of HttpRequest. libcurl is loaded on the first call (Errc::unavailable
// naming libcurl.so.4 when it is not installed).
std::unique_ptr<HttpClient> make_http_client(TlsOptions tls = {});

// The same on Boost.Beast and OpenSSL alone: HTTP/1.1, no body_sink or stall_timeout
// (Errc::internal: downloads take make_http_client). A changed client certificate file
// (rotation) is read again at the next call. A kept-alive connection the server closed while
// idle is replaced once, as libcurl does.
std::unique_ptr<HttpClient> make_lean_http_client(TlsOptions tls = {});

}  // namespace cairn
