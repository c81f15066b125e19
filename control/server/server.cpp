// The HTTPS server: Boost.Asio reactors (one io_context and thread per worker, connections
// spread round-robin), TlsTransport for TLS, Beast's HTTP/1.1 parser with header and body
// limits, and a deadline for every phase (handshake, headers, body, idle keep-alive) so a
// client can neither hold a connection forever nor make the server buffer more than it allows.
// Built for many idle keep-alive agents: an idle connection holds no buffers and no timer.
#include "control/server/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <optional>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "control/server/router.hpp"
#include "control/server/tls_transport.hpp"

namespace cairn::control::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

// What every connection shares with the server.
struct Shared {
  ServerConfig config;
  RequestHandler handler;
  Metrics& metrics;
  SslCtxPtr tls;
  std::atomic<bool> stopping{false};
  std::atomic<std::int64_t> in_flight{0};

  Shared(ServerConfig c, RequestHandler h, Metrics& m)
      : config(std::move(c)), handler(std::move(h)), metrics(m), tls(SSL_CTX_new(TLS_server_method())) {}
};

std::string_view to_sv(beast::string_view v) { return {v.data(), v.size()}; }

class Session;

// One io thread: its io_context, the connections it owns and their deadline sweep. A
// connection lives on one worker for its whole life, so nothing per connection is locked.
struct Worker {
  asio::io_context ioc{1};
  std::vector<std::shared_ptr<Session>> sessions;  // Session::slot_ is the index
  asio::steady_timer sweep{ioc};
};

// One connection, reactor style: wait for readiness, then read / decrypt / parse / answer with
// plain calls. Per request that is one readiness wait, one read and one write; deadlines are a
// timestamp the worker's sweep checks, not a timer re-armed per phase.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Shared& shared, Worker& worker)
      : shared_(shared),
        worker_(worker),
        socket_(std::move(socket)),
        tls_(static_cast<int>(socket_.native_handle()), shared.tls.get(), TlsTransport::Role::server) {
    shared_.metrics.connection_opened();
    beast::error_code ignored;
    socket_.non_blocking(true, ignored);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { shared_.metrics.connection_closed(); }

  // On the worker's thread.
  void start() {
    slot_ = worker_.sessions.size();
    worker_.sessions.push_back(shared_from_this());
    if (!tls_.valid()) return close_now();
    deadline_ = SteadyClock::now() + shared_.config.handshake_timeout;
    handshake();
  }

  void expire_if_due(SteadyClock::time_point now) {
    if (closed_ || now < deadline_) return;
    log::debug("control.connection_timeout", {{"requests", requests_}, {"phase", static_cast<int>(phase_)}});
    close_now();
  }

 private:
  enum class Phase { handshake, idle, reading, busy, writing, draining };
  using Step = void (Session::*)();
  static constexpr std::size_t kReadChunk = 16 << 10;  // one TLS record of plaintext
  static constexpr std::size_t kDrainLimit = 8 << 20;

  // Runs `step` when the socket is ready; a closed session ignores its pending waits.
  void wait(tcp::socket::wait_type what, Step step) {
    socket_.async_wait(what, [self = shared_from_this(), step](beast::error_code ec) {
      if (self->closed_) return;
      if (ec) return self->close_now();
      ((*self).*step)();
    });
  }

  bool wait_for(IoResult r, Step step) {
    if (r.status == IoStatus::want_read) wait(tcp::socket::wait_read, step);
    else if (r.status == IoStatus::want_write) wait(tcp::socket::wait_write, step);
    else return false;
    return true;
  }

  void handshake() {
    const IoResult r = tls_.handshake();
    if (wait_for(r, &Session::handshake)) return;
    if (r.status != IoStatus::ok) {
      shared_.metrics.tls_handshake_failed();
      log::debug("control.tls_handshake_failed", {{"error", r.status == IoStatus::closed ? "closed" : tls_.error()}});
      return close_now();
    }
    read_peer();
    if (!tls_.offload()) {
      log::debug("control.tls_not_offloaded", {{"version", tls_.ssl() ? SSL_get_version(tls_.ssl()) : "?"}});
    }
    phase_ = Phase::idle;
    deadline_ = SteadyClock::now() + shared_.config.header_timeout;  // the first request comes at once
    wait(tcp::socket::wait_read, &Session::read_more);
  }

  // The verify callback accepts every chain so a wrong certificate gets a JSON 401 instead
  // of a bare TLS alert; SSL_get_verify_result() keeps the real verdict.
  void read_peer() {
    SSL* ssl_handle = tls_.ssl();
    X509* cert = ssl_handle != nullptr ? SSL_get0_peer_certificate(ssl_handle) : nullptr;
    if (cert == nullptr) return;
    const long verdict = SSL_get_verify_result(ssl_handle);
    if (verdict != X509_V_OK) {
      peer_error_ = X509_verify_cert_error_string(verdict);
      shared_.metrics.tls_handshake_failed();
      return;
    }
    const CertInfo info = cert_info(cert);
    peer_.has_cert = true;
    peer_.subject_cn = info.subject_cn;
    peer_.serial_hex = info.serial_hex;
  }

  // Reads and parses until a request is complete or the socket has nothing more. A budget
  // of reads per turn keeps one fast sender from holding the worker (and its sweep).
  void read_more() {
    for (int budget = 16; budget-- > 0;) {
      const IoResult r = tls_.read(in_, kReadChunk);
      if (wait_for(r, &Session::read_more)) return;
      if (r.status == IoStatus::failed) {
        log::debug("control.read_failed", {{"error", tls_.error()}});
        return close_now();
      }
      if (r.status == IoStatus::closed) return close_now();
      if (phase_ == Phase::draining) {
        drained_ += std::max<std::size_t>(in_.size(), 1);
        in_.clear();
        if (drained_ > kDrainLimit) return close_now();
        continue;
      }
      if (!parse()) return;
    }
    asio::post(worker_.ioc, [self = shared_from_this()] {
      if (!self->closed_) self->read_more();
    });
  }

  // Feeds in_ to the parser. True when the request needs more bytes; false when it went on
  // (dispatched, or refused as malformed or too large).
  bool parse() {
    const auto now = SteadyClock::now();
    if (!parser_) {
      if (in_.empty()) return true;
      parser_.emplace();
      parser_->header_limit(static_cast<std::uint32_t>(shared_.config.max_header_bytes));
      parser_->body_limit(shared_.config.max_body_bytes);
      parser_->eager(true);
      phase_ = Phase::reading;
      endpoint_ = Endpoint::other;
      started_ = now;
      deadline_ = now + shared_.config.header_timeout;
    }
    beast::error_code ec;
    while (!in_.empty() && !parser_->is_done()) {
      const std::size_t n = parser_->put(asio::buffer(in_.data(), in_.size()), ec);
      in_.erase(0, n);
      if (ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec) {
        on_parse_error(ec);
        return false;
      }
      if (n == 0) break;
    }
    if (!header_seen_ && parser_->is_header_done()) {
      header_seen_ = true;
      endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
      deadline_ = now + shared_.config.body_timeout;
    }
    if (!parser_->is_done()) return true;
    dispatch();
    return false;
  }

  void on_parse_error(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return refuse(error_reply(413, "body_too_large",
                                "request body over the limit of " + std::to_string(shared_.config.max_body_bytes) +
                                    " bytes",
                                "send a smaller body, or raise 'cairn-control serve --max-body'"));
    }
    if (ec == http::error::header_limit) {
      return refuse(error_reply(431, "headers_too_large",
                                "request headers over the limit of " +
                                    std::to_string(shared_.config.max_header_bytes) + " bytes",
                                "send fewer or shorter headers"));
    }
    refuse(error_reply(400, "malformed_http", "malformed HTTP request: " + ec.message(),
                       "send HTTP/1.1 with a valid request line and headers"));
  }

  void begin_request() {
    if (in_flight_) return;
    in_flight_ = true;
    shared_.in_flight.fetch_add(1, std::memory_order_relaxed);
    phase_ = Phase::busy;
    deadline_ = SteadyClock::now() + shared_.config.body_timeout;
  }

  void end_request() {
    if (!in_flight_) return;
    in_flight_ = false;
    shared_.in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  // The answer goes out and the connection closes after it, reading off what the client is
  // still sending first (see drain()).
  void refuse(Reply reply) {
    begin_request();
    if (parser_ && parser_->is_header_done()) endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
    reply.close = true;
    drain_after_write_ = true;
    send(std::move(reply));
  }

  void dispatch() {
    begin_request();
    const auto& req = parser_->get();
    RouteRequest route_request{
        .method = std::string_view(req.method_string().data(), req.method_string().size()),
        .target = std::string_view(req.target().data(), req.target().size()),
        .authorization = {},
        .body = req.body(),
        .peer = peer_,
        .peer_cert_error = peer_error_,
    };
    if (auto it = req.find(http::field::authorization); it != req.end()) {
      route_request.authorization = std::string_view(it->value().data(), it->value().size());
    }
    // Answers computed right away are sent once route() has returned (the request it reads
    // lives in parser_); heartbeat answers come from the writer thread after the commit.
    auto done = [self = shared_from_this()](Reply reply) {
      if (self->worker_.ioc.get_executor().running_in_this_thread() && self->in_route_) {
        self->sync_reply_ = std::move(reply);
        return;
      }
      asio::post(self->worker_.ioc, [self, reply = std::move(reply)]() mutable { self->send(std::move(reply)); });
    };
    in_route_ = true;
    try {
      shared_.handler(route_request, std::move(done));
    } catch (const std::exception& e) {
      // A bug of ours; the connection answers 500 and the server keeps running.
      log::error("control.route_failed", {{"target", route_request.target}, {"error", e.what()}});
      sync_reply_ = error_reply(500, "internal", std::string("internal error: ") + e.what(),
                                "this is a bug in cairn-control; report it with the control log");
    }
    in_route_ = false;
    if (sync_reply_) {
      Reply reply = std::move(*sync_reply_);
      sync_reply_.reset();
      send(std::move(reply));
    }
  }

  void send(Reply reply) {
    if (closed_) return;
    ++requests_;
    const bool have_header = parser_ && parser_->is_header_done();
    const unsigned version = have_header ? parser_->get().version() : 11;
    const auto& cfg = shared_.config;
    keep_alive_ = have_header && parser_->get().keep_alive() && !reply.close &&
                  !shared_.stopping.load(std::memory_order_relaxed) &&
                  (cfg.max_requests_per_connection == 0 || requests_ < cfg.max_requests_per_connection);
    shared_.metrics.record_request(endpoint_, reply.status, SteadyClock::now() - started_);
    phase_ = Phase::writing;
    deadline_ = SteadyClock::now() + cfg.body_timeout;
    on_written(tls_.write(serialize(reply, version, keep_alive_)));
  }

  // Status line, headers and body in one buffer: one TLS record and one write() per answer.
  static std::string serialize(const Reply& reply, unsigned version, bool keep_alive) {
    const auto reason = http::obsolete_reason(static_cast<http::status>(reply.status));
    std::string out;
    out.reserve(160 + reply.body.size());
    out.append("HTTP/1.1 ").append(std::to_string(reply.status)).append(" ").append(reason.data(), reason.size());
    out.append("\r\nServer: cairn-control\r\nContent-Type: ").append(reply.content_type);
    out.append("\r\nContent-Length: ").append(std::to_string(reply.body.size()));
    if (!keep_alive) out.append("\r\nConnection: close");
    else if (version < 11) out.append("\r\nConnection: keep-alive");
    out.append("\r\n\r\n").append(reply.body);
    return out;
  }

  void flush() { on_written(tls_.flush()); }

  void on_written(IoResult r) {
    if (wait_for(r, &Session::flush)) return;
    end_request();
    started_ = {};
    if (r.status != IoStatus::ok) return close_now();
    if (drain_after_write_) return drain();
    if (!keep_alive_ || tls_.peer_closed()) return shutdown();
    parser_.reset();
    header_seen_ = false;
    phase_ = Phase::idle;
    deadline_ = SteadyClock::now() + shared_.config.idle_timeout;
    if (!in_.empty()) {  // the next request came with this one
      if (parse()) read_more();
      return;
    }
    // Idle connections hold no request memory (10k idle agents is the normal case).
    std::string().swap(in_);
    tls_.release_buffers();
    wait(tcp::socket::wait_read, &Session::read_more);
  }

  // After refusing a request whose body is still arriving, read and drop it for a moment
  // before closing: closing with unread data makes the kernel send a RST, and the client
  // would see "connection reset" instead of our answer (RFC 9112 9.6, "lingering close").
  void drain() {
    phase_ = Phase::draining;
    parser_.reset();
    in_.clear();
    drained_ = 0;
    deadline_ = SteadyClock::now() + std::chrono::seconds(2);
    read_more();
  }

  // close_notify, then the lingering close of drain(): closing with the client's bytes unread
  // would reset the connection and could destroy the answer before the client reads it.
  void shutdown() {
    tls_.send_close_notify();
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    drain();
  }

  void close_now() {
    if (closed_) return;
    const auto keep = shared_from_this();  // the worker's reference goes below
    closed_ = true;
    end_request();
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    auto& list = worker_.sessions;
    if (slot_ < list.size() && list[slot_].get() == this) {
      list[slot_] = std::move(list.back());
      list[slot_]->slot_ = slot_;
      list.pop_back();
    }
  }

  Shared& shared_;
  Worker& worker_;
  std::size_t slot_ = 0;
  tcp::socket socket_;
  TlsTransport tls_;
  Phase phase_ = Phase::handshake;
  SteadyClock::time_point deadline_{};
  bool closed_ = false;
  bool in_flight_ = false;
  bool in_route_ = false;
  bool header_seen_ = false;
  bool keep_alive_ = false;
  bool drain_after_write_ = false;
  std::string in_;  // decrypted bytes not parsed yet
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<Reply> sync_reply_;
  Peer peer_;
  std::string peer_error_;
  std::size_t requests_ = 0;
  std::size_t drained_ = 0;
  Endpoint endpoint_ = Endpoint::other;
  SteadyClock::time_point started_{};
};

Status load_tls(SSL_CTX* ctx, const ServerConfig& cfg) {
  if (ctx == nullptr) return fail(Errc::internal, "SSL_CTX_new: " + openssl_error());
  // TLS 1.2 minimum; 1.3 is negotiated whenever the client offers it.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  // Frees the record buffers of an idle TLS 1.2 connection (man SSL_CTX_set_mode).
  // PARTIAL_WRITE + MOVING_BUFFER: TlsTransport retries a partial write from its own buffer.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // No TLS 1.3 session tickets: each one keeps an SSL_SESSION (~8 KiB measured) per
  // connection, and agents keep one connection open for days; a reconnect is a full
  // (cheap, Ed25519/P-256) handshake.
  SSL_CTX_set_num_tickets(ctx, 0);
  // Nothing to resume: no server-side session cache holding SSL_SESSIONs either.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Traffic-secret capture for the TLS 1.3 record layer of TlsTransport, no read-ahead.
  prepare_tls_context(ctx);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg.cert_file.c_str()) != 1) {
    return fail(Errc::config, "server certificate " + cfg.cert_file.string() + ": " + openssl_error(),
                "run 'cairn-control init --state DIR' or point --state at an initialised dir");
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return fail(Errc::config, "server key " + cfg.key_file.string() + ": " + openssl_error(),
                "the key must be the PEM private key of " + cfg.cert_file.string());
  }
  if (SSL_CTX_load_verify_locations(ctx, cfg.ca_file.c_str(), nullptr) != 1) {
    return fail(Errc::config, "cluster CA " + cfg.ca_file.string() + ": " + openssl_error(),
                "run 'cairn-control init --state DIR' first");
  }
  if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.ca_file.c_str())) {
    SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
  }
  // Request a client certificate but do not require one: /v1/enroll and /healthz work
  // without. Accept any chain here; the router refuses what SSL_get_verify_result rejects.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  static constexpr unsigned char kSessionContext[] = "cairn-control";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  return {};
}

class BeastServer final : public Server {
 public:
  BeastServer(ServerConfig config, RequestHandler handler, Metrics& metrics)
      : shared_(std::make_shared<Shared>(std::move(config), std::move(handler), metrics)),
        workers_(make_workers(shared_->config.threads)),
        acceptor_(workers_.front()->ioc),
        signals_(workers_.front()->ioc),
        grace_timer_(workers_.front()->ioc),
        backoff_timer_(workers_.front()->ioc) {}

  ~BeastServer() override {
    // Drop every connection before the io_contexts go (they own the sockets' services).
    for (auto& w : workers_) w->ioc.stop();
  }

  Status init() {
    if (auto tls = load_tls(shared_->tls.get(), shared_->config); !tls) return tls;
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
      backoff_timer_.cancel();
      signals_.cancel(ignored);
      grace_deadline_ = SteadyClock::now() + shared_->config.shutdown_grace;
      wait_in_flight();
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
      socket.set_option(tcp::no_delay(true), ec);
      auto session = std::make_shared<Session>(std::move(socket), *shared_, worker);
      asio::post(worker.ioc, [session = std::move(session)] { session->start(); });
    }
    accept();
  }

  std::shared_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;  // before everything that uses their io_contexts
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer grace_timer_;
  asio::steady_timer backoff_timer_;
  SteadyClock::time_point grace_deadline_{};
  std::size_t next_worker_ = 0;
  std::uint16_t port_ = 0;
  std::uint64_t refused_logged_ = 0;
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
