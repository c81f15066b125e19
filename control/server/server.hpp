// The HTTPS front of cairn-control: Boost.Asio/Beast over OpenSSL, TLS 1.2+ with optional
// client certificates checked against the cluster CA, bounded in size, time and connections.
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
#include "control/service.hpp"

namespace cairn::control::server {

struct ServerConfig {
  std::string host = "127.0.0.1";  // an IP literal (v4 or v6, without brackets)
  std::uint16_t port = 8443;       // 0 = any free port (see Server::port())
  std::filesystem::path cert_file;  // server certificate + chain (PEM)
  std::filesystem::path key_file;
  std::filesystem::path ca_file;  // client certificates must chain to this
  int threads = 0;                // io threads; 0 = hardware concurrency
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds header_timeout{10'000};  // first byte .. end of headers
  std::chrono::milliseconds body_timeout{30'000};    // end of headers .. end of body (and the write)
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive wait for the next request
  std::chrono::milliseconds shutdown_grace{3'000};   // in-flight requests get this long on stop()
  std::size_t max_connections = 20'000;
  std::size_t max_requests_per_connection = 0;  // 0 = unlimited
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
  // SIGINT/SIGTERM call stop(). Call before run().
  virtual void stop_on_signals() = 0;
  // Serves on config.threads threads (the caller's included) until stop() has finished.
  virtual void run() = 0;
  // Thread-safe: stops accepting, lets in-flight requests finish for shutdown_grace, then
  // makes run() return. Connections still open are dropped when the Server is destroyed.
  virtual void stop() = 0;
};

}  // namespace cairn::control::server
