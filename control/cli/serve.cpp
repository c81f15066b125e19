// `cairn-control serve`: opens the state dir and serves the API until SIGTERM/SIGINT.
#include <sys/resource.h>

#include <iostream>
#include <optional>
#include <utility>
#include <string>

#include "common/fs.hpp"
#include "common/root.hpp"
#include "common/log.hpp"
#include "control/cli/commands.hpp"
#include "control/cli/parse.hpp"
#include "control/server/metrics.hpp"
#include "control/server/server.hpp"
#include "control/service.hpp"

namespace cairn::control::cli {
namespace {

struct ServeOptions {
  std::string state_dir;
  std::string listen = "127.0.0.1:8443";
  int threads = 0;
  int store_threads = 16;
  std::string cert_lifetime = "90d";
  std::string heartbeat_interval = "30s";
  int grace_intervals = 3;
  std::string max_body = "1MiB";
  std::size_t max_connections = 20'000;
  std::size_t max_requests_per_connection = 0;
  std::string handshake_timeout = "10s";
  std::string header_timeout = "10s";
  std::string body_timeout = "30s";
  std::string idle_timeout = "60s";
  std::string port_file;
  std::string tls_min = "1.2";
  std::string metrics_listen;
  double enroll_rate = 100;
  double enroll_burst = 200;
  std::size_t max_pending_heartbeats = 50'000;
  std::string rotation_grace = "10m";
  std::string node_label_keys;
  std::string database;  // issue 13: empty = SQLite in the state dir
  // tasks (issue 13)
  double headroom_cpu = 0.8;
  double headroom_mem = 0.8;
  double headroom_disk = 0.9;
  std::string max_lease = "10m";
  std::string retry_base = "1s";
  std::string retry_cap = "5m";
  std::string task_history = "7d";
  std::int64_t task_history_per_node = 10'000;
};

// 10k agents keep a connection each: lift the soft fd limit to the hard one.
void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (lim.rlim_cur < lim.rlim_max) {
    const auto before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) == 0) {
      log::debug("control.fd_limit_raised", {{"from", static_cast<std::uint64_t>(before)},
                                              {"to", static_cast<std::uint64_t>(lim.rlim_cur)}});
    }
  }
}

void print_error(const Error& e) {
  std::cerr << "cairn-control serve: " << e.message << "\n";
  if (!e.hint.empty()) std::cerr << "hint: " << e.hint << "\n";
}

Status serve(const ServeOptions& o) {
  auto listen = parse_listen(o.listen);
  if (!listen) return fail(listen.error());
  auto lifetime = parse_duration(o.cert_lifetime, "--cert-lifetime");
  if (!lifetime) return fail(lifetime.error());
  auto interval = parse_duration(o.heartbeat_interval, "--heartbeat-interval");
  if (!interval) return fail(interval.error());
  auto max_body = parse_size(o.max_body, "--max-body");
  if (!max_body) return fail(max_body.error());
  auto handshake = parse_duration(o.handshake_timeout, "--handshake-timeout");
  if (!handshake) return fail(handshake.error());
  auto header = parse_duration(o.header_timeout, "--header-timeout");
  if (!header) return fail(header.error());
  auto body = parse_duration(o.body_timeout, "--body-timeout");
  if (!body) return fail(body.error());
  auto idle = parse_duration(o.idle_timeout, "--idle-timeout");
  if (!idle) return fail(idle.error());
  if (*lifetime < std::chrono::seconds(1) || *interval < std::chrono::seconds(1)) {
    return fail(Errc::usage, "--cert-lifetime and --heartbeat-interval must be at least 1s");
  }
  if (o.grace_intervals < 1) return fail(Errc::usage, "--grace-intervals must be at least 1");
  if (o.tls_min != "1.2" && o.tls_min != "1.3") {
    return fail(Errc::usage, "--tls-min '" + o.tls_min + "': not a TLS version this server offers",
                "use 1.2 (TLS 1.2 and 1.3) or 1.3 (TLS 1.3 only)");
  }
  if (o.max_pending_heartbeats < 1) return fail(Errc::usage, "--max-pending-heartbeats must be at least 1");
  if (o.enroll_rate < 0 || o.enroll_burst < 1) {
    return fail(Errc::usage, "--enroll-rate must be >= 0 (0 = unlimited) and --enroll-burst >= 1");
  }
  std::optional<ListenAddress> metrics_listen;
  if (!o.metrics_listen.empty()) {
    auto m = parse_listen(o.metrics_listen);
    if (!m) return fail(m.error().with_context("--metrics-listen"));
    metrics_listen = *m;
  }
  auto rotation_grace = parse_duration(o.rotation_grace, "--rotation-grace");
  if (!rotation_grace) return fail(rotation_grace.error());
  auto label_keys = parse_label_keys(o.node_label_keys, "--node-label-keys");
  if (!label_keys) return fail(label_keys.error());

  auto max_lease = parse_duration(o.max_lease, "--max-lease");
  if (!max_lease) return fail(max_lease.error());
  auto retry_base = parse_duration(o.retry_base, "--retry-base");
  if (!retry_base) return fail(retry_base.error());
  auto retry_cap = parse_duration(o.retry_cap, "--retry-cap");
  if (!retry_cap) return fail(retry_cap.error());
  auto task_history = parse_duration(o.task_history, "--task-history");
  if (!task_history) return fail(task_history.error());
  for (const auto& [flag, v] : {std::pair{"--headroom-cpu", o.headroom_cpu}, std::pair{"--headroom-mem", o.headroom_mem},
                                std::pair{"--headroom-disk", o.headroom_disk}}) {
    if (!(v > 0 && v <= 1)) {
      return fail(Errc::usage, std::string(flag) + " " + std::to_string(v) + ": not a fraction above 0 and at most 1",
                  "e.g. 0.8 keeps 20% free");
    }
  }
  if (*max_lease < std::chrono::seconds(5) || *retry_base < std::chrono::milliseconds(1) || *retry_cap < *retry_base ||
      *task_history < std::chrono::seconds(1) || o.task_history_per_node < 1) {
    return fail(Errc::usage,
                "--max-lease must be at least 5s, --retry-base positive and at most --retry-cap, --task-history at "
                "least 1s and --task-history-per-node at least 1");
  }

  raise_fd_limit();
  const StatePaths state{o.state_dir};
  ServiceConfig service_config;
  service_config.cert_lifetime = std::chrono::duration_cast<std::chrono::seconds>(*lifetime);
  service_config.heartbeat_interval = std::chrono::duration_cast<std::chrono::seconds>(*interval);
  service_config.unreachable_after_intervals = o.grace_intervals;
  service_config.rotation_grace = std::chrono::duration_cast<std::chrono::seconds>(*rotation_grace);
  service_config.node_label_keys = std::move(*label_keys);
  service_config.max_pending_heartbeats = o.max_pending_heartbeats;
  service_config.database = o.database;
  service_config.headroom_cpu = o.headroom_cpu;
  service_config.headroom_mem = o.headroom_mem;
  service_config.headroom_disk = o.headroom_disk;
  service_config.max_lease = std::chrono::duration_cast<std::chrono::seconds>(*max_lease);
  service_config.retry_base = *retry_base;
  service_config.retry_cap = *retry_cap;
  service_config.task_history = std::chrono::duration_cast<std::chrono::seconds>(*task_history);
  service_config.task_history_per_node = o.task_history_per_node;
  auto service = open_service(state, service_config, SystemClock::instance());
  if (!service) return fail(service.error().with_context("state dir " + o.state_dir));

  server::ServerConfig config;
  config.host = listen->host;
  config.port = listen->port;
  config.cert_file = state.server_cert();
  config.key_file = state.server_key();
  config.ca_file = state.ca_cert();
  config.threads = o.threads;
  config.store_threads = o.store_threads;
  config.max_body_bytes = *max_body;
  config.max_connections = o.max_connections;
  config.max_requests_per_connection = o.max_requests_per_connection;
  config.handshake_timeout = *handshake;
  config.header_timeout = *header;
  config.body_timeout = *body;
  config.idle_timeout = *idle;
  config.tls_min = o.tls_min == "1.3" ? server::TlsMinVersion::tls1_3 : server::TlsMinVersion::tls1_2;
  config.kernel_tls = server::kernel_offers_tls_ulp(Root{});
  config.enroll_rate = o.enroll_rate;
  config.enroll_burst = o.enroll_burst;
  if (metrics_listen) {
    config.metrics_host = metrics_listen->host;
    config.metrics_port = metrics_listen->port;
  }

  server::Metrics metrics;
  auto srv = server::Server::create(config, **service, metrics);
  if (!srv) return fail(srv.error());
  (*srv)->stop_on_signals();
  if (!o.port_file.empty()) {
    if (auto w = write_file_atomic(o.port_file, std::to_string((*srv)->port()) + "\n"); !w) {
      return fail(w.error().with_context("--port-file"));
    }
  }
  log::info("control.listening", {{"addr", (*srv)->address()},
                                  {"port", static_cast<unsigned>((*srv)->port())},
                                  {"metrics_port", static_cast<unsigned>((*srv)->metrics_port())},
                                  {"state", o.state_dir}});
  (*srv)->run();
  // Handlers have stopped; flush the service (pending heartbeats are committed and their
  // answers queued on the stopped io_context), then drop the connections with the server.
  service->reset();
  srv->reset();
  log::info("control.stopped");
  return {};
}

}  // namespace

void add_serve(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "Run the control service (HTTPS API) until SIGTERM");
  cmd->add_option("--state", options->state_dir, "State dir made by 'cairn-control init'")->required();
  cmd->add_option("--listen", options->listen, "HOST:PORT to listen on ([::1]:PORT for IPv6; port 0 = any)")
      ->capture_default_str();
  cmd->add_option("--threads", options->threads, "IO threads (0 = one per CPU)")->capture_default_str();
  cmd->add_option("--store-threads", options->store_threads,
                  "Threads for requests that wait on the database (tasks, events, admin, enroll); 0 = on the IO threads")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  cmd->add_option("--cert-lifetime", options->cert_lifetime, "Lifetime of node certificates (e.g. 90d, 3600s)")
      ->capture_default_str();
  cmd->add_option("--heartbeat-interval", options->heartbeat_interval, "Heartbeat interval told to agents")
      ->capture_default_str();
  cmd->add_option("--grace-intervals", options->grace_intervals, "Missed intervals before a node is Unreachable")
      ->capture_default_str();
  cmd->add_option("--max-body", options->max_body, "Largest request body (e.g. 1MiB)")->capture_default_str();
  cmd->add_option("--max-connections", options->max_connections, "Open connections at most; more are closed")
      ->capture_default_str();
  cmd->add_option("--max-requests-per-connection", options->max_requests_per_connection,
                  "Close a keep-alive connection after this many requests (0 = never)")
      ->capture_default_str();
  cmd->add_option("--handshake-timeout", options->handshake_timeout, "TLS handshake deadline")->capture_default_str();
  cmd->add_option("--header-timeout", options->header_timeout, "Deadline to receive a request's headers")
      ->capture_default_str();
  cmd->add_option("--body-timeout", options->body_timeout, "Deadline to receive a body / send an answer")
      ->capture_default_str();
  cmd->add_option("--idle-timeout", options->idle_timeout, "Keep-alive wait for the next request")
      ->capture_default_str();
  cmd->add_option("--tls-min", options->tls_min, "Lowest TLS version offered: 1.2 or 1.3 (1.3 only)")
      ->capture_default_str();
  cmd->add_option("--metrics-listen", options->metrics_listen,
                  "Serve /metrics and /healthz over plain HTTP on this HOST:PORT only (default: on --listen)");
  cmd->add_option("--enroll-rate", options->enroll_rate,
                  "Enrollments per second accepted on average; more get 429 (0 = unlimited)")
      ->capture_default_str();
  cmd->add_option("--enroll-burst", options->enroll_burst, "Enrollments accepted at once above the rate")
      ->capture_default_str();
  cmd->add_option("--max-pending-heartbeats", options->max_pending_heartbeats,
                  "Heartbeats waiting for the disk at most; more get 503 busy")
      ->capture_default_str();
  cmd->add_option("--port-file", options->port_file, "Write the bound port here (atomically) once listening");
  cmd->add_option("--rotation-grace", options->rotation_grace,
                  "How long a rotated-out node certificate still works (requests in flight)")
      ->capture_default_str();
  cmd->add_option("--node-label-keys", options->node_label_keys,
                  "Label keys a node may set on itself at enrollment, k1,k2 (token labels always win; "
                  "default: none)");
  cmd->add_option("--database", options->database,
                  "postgresql://user@host:port/db: a PostgreSQL database several serve replicas share "
                  "(each with the same state dir's CA); default: SQLite in the state dir");
  cmd->add_option("--headroom-cpu", options->headroom_cpu,
                  "Tasks are offered to a node only while it stays under this fraction of its CPUs")
      ->capture_default_str();
  cmd->add_option("--headroom-mem", options->headroom_mem, "... and of its memory")->capture_default_str();
  cmd->add_option("--headroom-disk", options->headroom_disk, "... and of its disk")->capture_default_str();
  cmd->add_option("--max-lease", options->max_lease, "Longest task lease a node may ask for (it extends it)")
      ->capture_default_str();
  cmd->add_option("--retry-base", options->retry_base, "Backoff before the first retry of a transient failure")
      ->capture_default_str();
  cmd->add_option("--retry-cap", options->retry_cap, "Longest backoff between retries (it doubles, with jitter)")
      ->capture_default_str();
  cmd->add_option("--task-history", options->task_history, "Finished tasks and their output are kept this long")
      ->capture_default_str();
  cmd->add_option("--task-history-per-node", options->task_history_per_node,
                  "... and at most this many per node (the newest)")
      ->capture_default_str();
  cmd->callback([options, &exit_code] {
    if (auto ok = serve(*options); !ok) {
      print_error(ok.error());
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
