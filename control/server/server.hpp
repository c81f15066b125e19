// The HTTPS front of cairn-control: Boost.Asio reactors, Beast's HTTP/1.1 parser and OpenSSL
// for all of TLS (tls_context.hpp), client certificates checked against the cluster CA,
// bounded in size, time, connections and work per turn.
// It turns each request into one route() call (router.hpp) and never holds business state.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "common/result.hpp"
#include "control/server/metrics.hpp"
#include "control/server/router.hpp"
#include "control/server/tls_context.hpp"
#include "control/service.hpp"

namespace cairn::control::server {

struct ServerConfig {
  std::string host = "127.0.0.1";  // an IP literal (v4 or v6, without brackets)
  std::uint16_t port = 8443;       // 0 = any free port (see Server::port())
  std::filesystem::path cert_file;  // server certificate + chain (PEM)
  std::filesystem::path key_file;
  std::filesystem::path ca_file;  // client certificates must chain to this
  TlsMinVersion tls_min = TlsMinVersion::tls1_2;
  bool kernel_tls = false;        // ask OpenSSL for kernel TLS (only where the kernel has the ULP)
  int threads = 0;                // io threads; 0 = hardware concurrency
  // Requests that wait on the store (tasks, events, admin, enroll, rotate) run on a pool of
  // this many threads, so the io threads keep serving TLS and heartbeats while a PostgreSQL
  // round trip is under way (heartbeats have their own writer thread); 0 runs them on the io threads.
  int store_threads = 16;
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds header_timeout{10'000};  // first byte .. end of headers
  std::chrono::milliseconds body_timeout{30'000};    // end of headers .. end of body (and the write)
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive wait for the next request
  std::chrono::milliseconds shutdown_grace{3'000};   // in-flight requests get this long on stop()
  std::size_t max_connections = 20'000;
  std::size_t max_requests_per_connection = 0;  // 0 = unlimited
  // Requests parsed and answered per connection per turn of its io thread before the others
  // get theirs: a client pipelining thousands of requests is served in slices, not in one go.
  std::size_t requests_per_turn = 32;
  // /v1/enroll (no client certificate needed) at most this many a second on average, bursts
  // of enroll_burst; more are answered 429 with Retry-After. 0 = unlimited.
  double enroll_rate = 100;
  double enroll_burst = 200;
  // When set, /metrics is served only on this plain-HTTP address (with /healthz), and the
  // HTTPS listener answers 404 for it.
  std::string metrics_host;
  std::uint16_t metrics_port = 0;
};

// Answers one parsed request; `done` is called exactly once, on any thread.
using RequestHandler = std::function<void(const RouteRequest&, ReplyFn done)>;

class Server {
 public:
  // Loads the TLS material and binds the listening socket (so port() is known at once).
  // Requests go to route() with `service`.
  static Result<std::unique_ptr<Server>> create(ServerConfig config, ControlService& service,
                                                Metrics& metrics);
  // The same server with another handler (tools/bench/trivial_responder).
  static Result<std::unique_ptr<Server>> create(ServerConfig config, RequestHandler handler,
                                                Metrics& metrics);
  virtual ~Server() = default;

  [[nodiscard]] virtual std::uint16_t port() const = 0;
  // "127.0.0.1:8443" or "[::1]:8443"
  [[nodiscard]] virtual std::string address() const = 0;
  // The plain-HTTP metrics listener's port, 0 when /metrics is on the HTTPS listener.
  [[nodiscard]] virtual std::uint16_t metrics_port() const = 0;
  // SIGINT/SIGTERM call stop(). Call before run().
  virtual void stop_on_signals() = 0;
  // Serves on config.threads threads (the caller's included) until stop() has finished.
  virtual void run() = 0;
  // Thread-safe: stops accepting, lets in-flight requests finish for shutdown_grace, then
  // makes run() return. Connections still open are dropped when the Server is destroyed.
  virtual void stop() = 0;
};

}  // namespace cairn::control::server
