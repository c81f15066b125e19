// Prometheus counters of cairn-control (text exposition format 0.0.4,
// https://prometheus.io/docs/instrumenting/exposition_formats/). Every update is a relaxed
// atomic add on a fixed slot, so the 5k req/s path takes no lock and allocates nothing.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "control/service.hpp"

namespace cairn::control::server {

// The endpoints the server knows; everything else is counted as `other`.
enum class Endpoint : std::uint8_t {
  enroll,
  heartbeat,
  rotate,
  admin,
  healthz,
  metrics,
  other,
};
inline constexpr std::size_t kEndpointCount = 7;
std::string_view endpoint_name(Endpoint e);

// Upper bounds (seconds) of the latency histogram buckets, 1 ms .. 5 s; +Inf is implicit.
inline constexpr std::array<double, 12> kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0};

class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void record_request(Endpoint endpoint, int status, std::chrono::nanoseconds duration);
  void tls_handshake_failed() { tls_handshake_failures_.fetch_add(1, std::memory_order_relaxed); }
  void connection_opened() { connections_open_.fetch_add(1, std::memory_order_relaxed); }
  void connection_closed() { connections_open_.fetch_sub(1, std::memory_order_relaxed); }
  void connection_refused() { connections_refused_.fetch_add(1, std::memory_order_relaxed); }
  // /v1/enroll answered 429 by the rate limit (unauthenticated work is bounded).
  void enroll_throttled() { enroll_throttled_.fetch_add(1, std::memory_order_relaxed); }
  // Kernel TLS: whether the kernel offers the tls ULP (set once at startup) and how many
  // connections OpenSSL moved onto it.
  void set_kernel_tls_available(bool available) { kernel_tls_available_.store(available, std::memory_order_relaxed); }
  void kernel_tls_connection() { kernel_tls_connections_.fetch_add(1, std::memory_order_relaxed); }

  [[nodiscard]] std::int64_t connections_open() const {
    return connections_open_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t tls_handshake_failures() const {
    return tls_handshake_failures_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t requests(Endpoint endpoint, int status) const;

  // The whole exposition; node counts and enrollments come from the service (may be null).
  [[nodiscard]] std::string render(ControlService* service) const;

 private:
  static constexpr int kMaxStatus = 600;
  struct PerEndpoint {
    std::array<std::atomic<std::uint64_t>, kMaxStatus> by_status{};
    std::array<std::atomic<std::uint64_t>, kLatencyBuckets.size() + 1> buckets{};  // last: +Inf
    std::atomic<std::uint64_t> sum_ns{0};
    std::atomic<std::uint64_t> count{0};
  };
  std::array<PerEndpoint, kEndpointCount> endpoints_;
  std::atomic<std::uint64_t> tls_handshake_failures_{0};
  std::atomic<std::uint64_t> connections_refused_{0};
  std::atomic<std::int64_t> connections_open_{0};
  std::atomic<std::uint64_t> enroll_throttled_{0};
  std::atomic<bool> kernel_tls_available_{false};
  std::atomic<std::uint64_t> kernel_tls_connections_{0};
};

}  // namespace cairn::control::server
