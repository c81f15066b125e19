// The HTTPS server: Boost.Asio reactors (one io_context and thread per worker, connections
// spread round-robin), each connection a Session (session.hpp) on one of them, and a
// deadline sweep per worker, so a client can neither hold a connection forever nor make
// the server buffer more than it allows. Built for many idle keep-alive agents: an idle
// connection holds no buffers and no timer.
#include "control/server/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <optional>
#include <thread>
#include <vector>

#include "common/log.hpp"
#include "control/server/metrics_listener.hpp"
#include "control/server/router.hpp"
#include "control/server/session.hpp"

namespace cairn::control::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

class BeastServer final : public Server {
 public:
  BeastServer(ServerConfig config, RequestHandler handler, Metrics& metrics)
      : shared_(std::make_shared<ServerShared>(std::move(config), std::move(handler), metrics)),
        workers_(make_workers(shared_->config.threads)),
        acceptor_(workers_.front()->ioc),
        signals_(workers_.front()->ioc),
        grace_timer_(workers_.front()->ioc),
        backoff_timer_(workers_.front()->ioc) {
    if (shared_->config.store_threads > 0) {
      store_pool_ = std::make_unique<asio::thread_pool>(static_cast<std::size_t>(shared_->config.store_threads));
      shared_->store_pool = store_pool_.get();
    }
  }

  ~BeastServer() override {
    // Drop every connection before the io_contexts go (they own the sockets' services).
    for (auto& w : workers_) w->ioc.stop();
    // Requests still on the store pool finish (their answers are posted to the stopped
    // io_contexts and dropped with them) before anything they use goes.
    if (store_pool_) {
      store_pool_->join();
      shared_->store_pool = nullptr;
    }
  }

  Status init() {
    const auto& cfg = shared_->config;
    auto tls = make_server_tls_context({.cert_file = cfg.cert_file,
                                        .key_file = cfg.key_file,
                                        .ca_file = cfg.ca_file,
                                        .min_version = cfg.tls_min,
                                        .kernel_tls = cfg.kernel_tls});
    if (!tls) return fail(tls.error());
    shared_->tls = std::move(*tls);
    shared_->metrics.set_kernel_tls_available(cfg.kernel_tls);
    log::info("control.tls", {{"min_version", cfg.tls_min == TlsMinVersion::tls1_3 ? "1.3" : "1.2"},
                              {"kernel_tls", cfg.kernel_tls ? "on" : "off (the kernel has no tls ULP)"}});
    if (!cfg.metrics_host.empty()) {
      auto listener = MetricsListener::create(workers_.front()->ioc, cfg.metrics_host, cfg.metrics_port,
                                              shared_->handler);
      if (!listener) return fail(listener.error());
      metrics_listener_ = std::move(*listener);
      shared_->config.metrics_port = metrics_listener_->port();
    }
    beast::error_code ec;
    const auto address = asio::ip::make_address(shared_->config.host, ec);
    if (ec) {
      return fail(Errc::usage, "listen address '" + shared_->config.host + "': not an IP address",
                  "use an IP literal such as 127.0.0.1 or [::1]");
    }
    const tcp::endpoint endpoint(address, shared_->config.port);
    const auto where = [&] { return shared_->config.host + ":" + std::to_string(shared_->config.port); };
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return fail(Errc::unavailable, "listen on " + where() + ": " + ec.message(),
                  "pick a free port with --listen, or stop what is using it");
    }
    port_ = acceptor_.local_endpoint(ec).port();
    return {};
  }

  [[nodiscard]] std::uint16_t port() const override { return port_; }
  [[nodiscard]] std::uint16_t metrics_port() const override {
    return metrics_listener_ ? metrics_listener_->port() : 0;
  }
  [[nodiscard]] std::string address() const override {
    const auto& host = shared_->config.host;
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port_);
  }

  void stop_on_signals() override {
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.async_wait([this](beast::error_code ec, int signo) {
      if (ec) return;
      log::info("control.stopping", {{"signal", signo}});
      stop();
    });
  }

  void run() override {
    for (auto& w : workers_) asio::post(w->ioc, [this, worker = w.get()] { sweep(*worker); });
    asio::post(acceptor_.get_executor(), [this] { accept(); });
    if (metrics_listener_) metrics_listener_->start();
    std::vector<std::thread> pool;
    pool.reserve(workers_.size() - 1);
    for (std::size_t i = 1; i < workers_.size(); ++i) pool.emplace_back([this, i] { run_loop(*workers_[i]); });
    run_loop(*workers_.front());
    for (auto& t : pool) t.join();
  }

  void stop() override {
    asio::post(acceptor_.get_executor(), [this] {
      if (shared_->stopping.exchange(true)) return;
      beast::error_code ignored;
      acceptor_.close(ignored);
      if (metrics_listener_) metrics_listener_->stop();
      backoff_timer_.cancel();
      signals_.cancel(ignored);
      grace_deadline_ = SteadyClock::now() + shared_->config.shutdown_grace;
      // Idle keep-alive connections close now, with close_notify; those with a request in
      // flight finish it (keep-alive is off while stopping) within the grace.
      for (auto& w : workers_) {
        asio::post(w->ioc, [worker = w.get()] {
          const auto sessions = worker->sessions;  // closing edits the list
          for (const auto& session : sessions) session->close_if_idle();
        });
      }
      // First look after one tick, so every worker has run its closes before it stops.
      grace_timer_.expires_after(std::chrono::milliseconds(20));
      grace_timer_.async_wait([this](beast::error_code) { wait_in_flight(); });
    });
  }

 private:
  static std::vector<std::unique_ptr<Worker>> make_workers(int threads) {
    const int n = threads > 0 ? threads : static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
    std::vector<std::unique_ptr<Worker>> workers;
    for (int i = 0; i < n; ++i) workers.push_back(std::make_unique<Worker>());
    return workers;
  }

  static void run_loop(Worker& worker) {
    for (;;) {
      try {
        worker.ioc.run();
        return;
      } catch (const std::exception& e) {
        log::error("control.handler_failed", {{"error", e.what()}});
      }
    }
  }

  // Every connection's deadline is checked a few times per shortest timeout: a scan of 10k
  // timestamps costs less than re-arming a timer on every request would.
  void sweep(Worker& worker) {
    const auto now = SteadyClock::now();
    for (std::size_t i = worker.sessions.size(); i-- > 0;) {
      const auto session = worker.sessions[i];  // expiring removes it from the list
      session->expire_if_due(now);
    }
    const auto& c = shared_->config;
    const auto shortest = std::min({c.handshake_timeout, c.header_timeout, c.body_timeout, c.idle_timeout});
    const auto tick = std::clamp(shortest / 8, std::chrono::milliseconds(20), std::chrono::milliseconds(500));
    worker.sweep.expires_after(tick);
    worker.sweep.async_wait([this, &worker](beast::error_code ec) {
      if (!ec) sweep(worker);
    });
  }

  void wait_in_flight() {
    if (shared_->in_flight.load() <= 0 || SteadyClock::now() >= grace_deadline_) {
      for (auto& w : workers_) w->ioc.stop();
      return;
    }
    grace_timer_.expires_after(std::chrono::milliseconds(20));
    grace_timer_.async_wait([this](beast::error_code) { wait_in_flight(); });
  }

  void accept() {
    Worker& worker = *workers_[next_worker_];
    next_worker_ = (next_worker_ + 1) % workers_.size();
    acceptor_.async_accept(worker.ioc, [this, &worker](beast::error_code ec, tcp::socket socket) {
      on_accept(ec, std::move(socket), worker);
    });
  }

  void on_accept(beast::error_code ec, tcp::socket socket, Worker& worker) {
    if (shared_->stopping.load()) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // EMFILE/ENFILE and friends: back off instead of spinning on the ready listener.
      log::warn("control.accept_failed", {{"error", ec.message()}});
      backoff_timer_.expires_after(std::chrono::milliseconds(100));
      backoff_timer_.async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    if (static_cast<std::size_t>(shared_->metrics.connections_open()) >= shared_->config.max_connections) {
      // Over the cap: close at once so the client sees a clean reset and can retry later.
      shared_->metrics.connection_refused();
      if (refused_logged_++ % 1000 == 0) {
        log::warn("control.connection_refused", {{"reason", "max_connections"},
                                                 {"max_connections", shared_->config.max_connections}});
      }
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      // Answers are one write each and must leave at once, not wait for an ACK (Nagle).
      socket.set_option(tcp::no_delay(true), ec);
      auto session = std::make_shared<Session>(std::move(socket), *shared_, worker);
      asio::post(worker.ioc, [session = std::move(session)] { session->start(); });
    }
    accept();
  }

  std::shared_ptr<ServerShared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;  // before everything that uses their io_contexts
  std::unique_ptr<MetricsListener> metrics_listener_;
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer grace_timer_;
  asio::steady_timer backoff_timer_;
  SteadyClock::time_point grace_deadline_{};
  std::size_t next_worker_ = 0;
  std::uint16_t port_ = 0;
  std::uint64_t refused_logged_ = 0;
  std::unique_ptr<asio::thread_pool> store_pool_;  // joined in the destructor, before workers_ go
};

}  // namespace

Result<std::unique_ptr<Server>> Server::create(ServerConfig config, ControlService& service,
                                               Metrics& metrics) {
  return create(
      std::move(config),
      [&service, &metrics](const RouteRequest& request, ReplyFn done) {
        route(service, metrics, request, std::move(done));
      },
      metrics);
}

Result<std::unique_ptr<Server>> Server::create(ServerConfig config, RequestHandler handler, Metrics& metrics) {
  // OpenSSL write()s the socket itself in handshakes and TLS 1.2 (no MSG_NOSIGNAL): without
  // this, a client that disconnects while its answer is being written kills the process.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    auto server = std::make_unique<BeastServer>(std::move(config), std::move(handler), metrics);
    if (auto ok = server->init(); !ok) return fail(ok.error());
    return std::unique_ptr<Server>(std::move(server));
  } catch (const std::exception& e) {
    return fail(Errc::internal, std::string("starting the HTTPS server: ") + e.what(),
                "this is a bug in cairn-control; report it with the log");
  }
}

}  // namespace cairn::control::server
