// Prometheus text rendering of the server's counters.
#include "control/server/metrics.hpp"

#include <fmt/format.h>

namespace cairn::control::server {

std::string_view endpoint_name(Endpoint e) {
  switch (e) {
    case Endpoint::enroll: return "enroll";
    case Endpoint::heartbeat: return "heartbeat";
    case Endpoint::rotate: return "rotate";
    case Endpoint::admin: return "admin";
    case Endpoint::healthz: return "healthz";
    case Endpoint::metrics: return "metrics";
    case Endpoint::other: return "other";
  }
  return "other";
}

Metrics::Metrics() = default;

namespace {

// Tasks (h-taskbatch): the store's counts by state, this replica's counters, the lease
// latency (the store's lease call).
void render_tasks(std::string& out, const TaskMetrics& m) {
  auto it = std::back_inserter(out);
  if (!m.by_state.empty()) {
    out += "# HELP cairn_tasks Stored tasks by state (all replicas; read at most every 5 s).\n";
    out += "# TYPE cairn_tasks gauge\n";
    for (const auto& [state, n] : m.by_state) fmt::format_to(it, "cairn_tasks{{state=\"{}\"}} {}\n", state, n);
    const auto queued = m.by_state.find("queued");
    out += "# HELP cairn_task_queue_depth Tasks waiting for a node (queued).\n";
    out += "# TYPE cairn_task_queue_depth gauge\n";
    fmt::format_to(it, "cairn_task_queue_depth {}\n", queued == m.by_state.end() ? 0 : queued->second);
  }
  const auto counter = [&](std::string_view name, std::string_view help, std::int64_t value) {
    fmt::format_to(it, "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
  };
  counter("cairn_task_lease_requests_total", "Lease requests that reached the store.", m.lease_requests);
  counter("cairn_task_leases_total", "Tasks leased to nodes.", m.leased);
  out += "# HELP cairn_task_completions_total Completions accepted, by outcome (succeeded, cancelled) or failure "
         "reason.\n";
  out += "# TYPE cairn_task_completions_total counter\n";
  for (const auto& [reason, n] : m.completions) {
    fmt::format_to(it, "cairn_task_completions_total{{reason=\"{}\"}} {}\n", reason, n);
  }
  counter("cairn_task_lease_expirations_total", "Leases that ran out before their task completed.", m.expirations);
  counter("cairn_task_dead_total", "Tasks that ended dead (transient failures until max attempts).", m.dead);
  out += "# HELP cairn_task_lease_duration_seconds Time the store took to lease (placement, admission, update).\n";
  out += "# TYPE cairn_task_lease_duration_seconds histogram\n";
  std::int64_t cumulative = 0;
  for (std::size_t b = 0; b < kTaskLeaseBuckets.size(); ++b) {
    cumulative += m.lease_latency_buckets[b];
    fmt::format_to(it, "cairn_task_lease_duration_seconds_bucket{{le=\"{}\"}} {}\n", kTaskLeaseBuckets[b], cumulative);
  }
  cumulative += m.lease_latency_buckets.back();
  fmt::format_to(it, "cairn_task_lease_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", cumulative);
  fmt::format_to(it, "cairn_task_lease_duration_seconds_sum {:.6f}\n", m.lease_latency_sum_s);
  fmt::format_to(it, "cairn_task_lease_duration_seconds_count {}\n", m.lease_latency_count);
}

}  // namespace

void Metrics::record_request(Endpoint endpoint, int status, std::chrono::nanoseconds duration) {
  auto& slot = endpoints_[static_cast<std::size_t>(endpoint)];
  if (status < 0 || status >= kMaxStatus) status = 0;
  slot.by_status[static_cast<std::size_t>(status)].fetch_add(1, std::memory_order_relaxed);
  const double seconds = std::chrono::duration<double>(duration).count();
  std::size_t bucket = 0;
  while (bucket < kLatencyBuckets.size() && seconds > kLatencyBuckets[bucket]) ++bucket;
  slot.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  slot.sum_ns.fetch_add(static_cast<std::uint64_t>(duration.count()), std::memory_order_relaxed);
  slot.count.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t Metrics::requests(Endpoint endpoint, int status) const {
  if (status < 0 || status >= kMaxStatus) return 0;
  return endpoints_[static_cast<std::size_t>(endpoint)]
      .by_status[static_cast<std::size_t>(status)]
      .load(std::memory_order_relaxed);
}

std::string Metrics::render(ControlService* service) const {
  std::string out;
  out.reserve(8192);
  auto it = std::back_inserter(out);

  out += "# HELP cairn_http_requests_total HTTP requests answered, by endpoint and status.\n";
  out += "# TYPE cairn_http_requests_total counter\n";
  for (std::size_t e = 0; e < kEndpointCount; ++e) {
    const auto name = endpoint_name(static_cast<Endpoint>(e));
    for (int s = 0; s < kMaxStatus; ++s) {
      const auto n = endpoints_[e].by_status[static_cast<std::size_t>(s)].load(std::memory_order_relaxed);
      if (n == 0) continue;
      fmt::format_to(it, "cairn_http_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", name, s, n);
    }
  }

  out += "# HELP cairn_http_request_duration_seconds Time from request read to response queued.\n";
  out += "# TYPE cairn_http_request_duration_seconds histogram\n";
  for (std::size_t e = 0; e < kEndpointCount; ++e) {
    const auto& slot = endpoints_[e];
    const auto count = slot.count.load(std::memory_order_relaxed);
    if (count == 0) continue;
    const auto name = endpoint_name(static_cast<Endpoint>(e));
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kLatencyBuckets.size(); ++b) {
      cumulative += slot.buckets[b].load(std::memory_order_relaxed);
      fmt::format_to(it, "cairn_http_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"{}\"}} {}\n",
                     name, kLatencyBuckets[b], cumulative);
    }
    cumulative += slot.buckets.back().load(std::memory_order_relaxed);
    // Updates are not one transaction: keep +Inf == count so the series stays consistent.
    const auto total = std::max(cumulative, count);
    fmt::format_to(it, "cairn_http_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"+Inf\"}} {}\n",
                   name, total);
    fmt::format_to(it, "cairn_http_request_duration_seconds_sum{{endpoint=\"{}\"}} {:.6f}\n", name,
                   static_cast<double>(slot.sum_ns.load(std::memory_order_relaxed)) / 1e9);
    fmt::format_to(it, "cairn_http_request_duration_seconds_count{{endpoint=\"{}\"}} {}\n", name, total);
  }

  if (service != nullptr) {
    const NodeCounts nodes = service->node_counts();
    out += "# HELP cairn_nodes Known nodes by liveness state.\n";
    out += "# TYPE cairn_nodes gauge\n";
    fmt::format_to(it, "cairn_nodes{{state=\"enrolled\"}} {}\n", nodes.enrolled);
    fmt::format_to(it, "cairn_nodes{{state=\"ready\"}} {}\n", nodes.ready);
    fmt::format_to(it, "cairn_nodes{{state=\"unreachable\"}} {}\n", nodes.unreachable);
    fmt::format_to(it, "cairn_nodes{{state=\"revoked\"}} {}\n", nodes.revoked);
    out += "# HELP cairn_enrollments_total Successful enrollments.\n";
    out += "# TYPE cairn_enrollments_total counter\n";
    fmt::format_to(it, "cairn_enrollments_total {}\n", service->enrollments_total());
    if (auto tasks = service->task_metrics()) render_tasks(out, *tasks);
  }

  out += "# HELP cairn_tls_handshake_failures_total TLS handshakes that failed or presented an "
         "unverifiable client certificate.\n";
  out += "# TYPE cairn_tls_handshake_failures_total counter\n";
  fmt::format_to(it, "cairn_tls_handshake_failures_total {}\n",
                 tls_handshake_failures_.load(std::memory_order_relaxed));
  out += "# HELP cairn_connections_refused_total Connections closed at accept because the cap was reached.\n";
  out += "# TYPE cairn_connections_refused_total counter\n";
  fmt::format_to(it, "cairn_connections_refused_total {}\n",
                 connections_refused_.load(std::memory_order_relaxed));
  out += "# HELP cairn_connections_open Open client connections.\n";
  out += "# TYPE cairn_connections_open gauge\n";
  fmt::format_to(it, "cairn_connections_open {}\n", connections_open_.load(std::memory_order_relaxed));
  out += "# HELP cairn_enroll_throttled_total Enrollment requests refused with 429 by the rate limit.\n";
  out += "# TYPE cairn_enroll_throttled_total counter\n";
  fmt::format_to(it, "cairn_enroll_throttled_total {}\n", enroll_throttled_.load(std::memory_order_relaxed));
  out += "# HELP cairn_tls_kernel_offload_available 1 when the kernel offers the tls ULP and OpenSSL "
         "is asked to use it (SSL_OP_ENABLE_KTLS).\n";
  out += "# TYPE cairn_tls_kernel_offload_available gauge\n";
  fmt::format_to(it, "cairn_tls_kernel_offload_available {}\n",
                 kernel_tls_available_.load(std::memory_order_relaxed) ? 1 : 0);
  out += "# HELP cairn_tls_kernel_offload_connections_total Connections whose records the kernel carries.\n";
  out += "# TYPE cairn_tls_kernel_offload_connections_total counter\n";
  fmt::format_to(it, "cairn_tls_kernel_offload_connections_total {}\n",
                 kernel_tls_connections_.load(std::memory_order_relaxed));
  return out;
}

}  // namespace cairn::control::server
