// Boost.Beast HTTPS server, shaped after Beast's advanced_server_flex and
// http_server_async_ssl examples: one strand per connection, beast::tcp_stream deadlines
// for every phase (handshake, headers, body, idle keep-alive) and a parser with
// header_limit/body_limit so a client can neither hold a connection forever nor make the
// server buffer more than it allows.
#include "control/server/server.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <csignal>
#include <optional>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/log.hpp"
#include "control/server/router.hpp"
#include "control/server/tls_stream.hpp"

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
  ControlService& service;
  Metrics& metrics;
  SslCtxPtr tls;
  std::atomic<bool> stopping{false};
  std::atomic<std::int64_t> in_flight{0};

  Shared(ServerConfig c, ControlService& s, Metrics& m)
      : config(std::move(c)), service(s), metrics(m), tls(SSL_CTX_new(TLS_server_method())) {}
};

std::string_view to_sv(beast::string_view v) { return {v.data(), v.size()}; }

bool is_quiet_close(const beast::error_code& ec) {
  // The client went away or the stream timed out: nothing to answer.
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == asio::ssl::error::stream_truncated || ec == beast::error::timeout ||
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<Shared> shared)
      : shared_(std::move(shared)),
        stream_(std::move(socket), shared_->tls.get()),
        timer_(stream_.get_executor()) {
    shared_->metrics.connection_opened();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { shared_->metrics.connection_closed(); }

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->handshake(); });
  }

 private:
  void handshake() {
    arm(shared_->config.handshake_timeout);
    stream_.async_handshake([self = shared_from_this()](beast::error_code ec) { self->on_handshake(ec); });
  }

  void on_handshake(beast::error_code ec) {
    if (ec) {
      shared_->metrics.tls_handshake_failed();
      log::debug("control.tls_handshake_failed", {{"error", ec.message()}});
      return close_now();
    }
    read_peer();
    wait_request();
  }

  // The verify callback accepts every chain so a wrong certificate gets a JSON 401 instead
  // of a bare TLS alert; SSL_get_verify_result() keeps the real verdict.
  void read_peer() {
    SSL* ssl_handle = stream_.native_handle();
    X509* cert = SSL_get0_peer_certificate(ssl_handle);
    if (cert == nullptr) return;
    const long verdict = SSL_get_verify_result(ssl_handle);
    if (verdict != X509_V_OK) {
      peer_error_ = X509_verify_cert_error_string(verdict);
      shared_->metrics.tls_handshake_failed();
      return;
    }
    const CertInfo info = cert_info(cert);
    peer_.has_cert = true;
    peer_.subject_cn = info.subject_cn;
    peer_.serial_hex = info.serial_hex;
  }

  // Waits for the first bytes of the next request: the idle timeout between requests,
  // the header timeout for the first one.
  void wait_request() {
    if (buffer_.size() > 0) return read_header();
    arm(requests_ == 0 ? shared_->config.header_timeout : shared_->config.idle_timeout);
    stream_.async_wait_readable([self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->on_read_error(ec);
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(shared_->config.max_header_bytes));
    parser_->body_limit(shared_->config.max_body_bytes);
    endpoint_ = Endpoint::other;
    arm(shared_->config.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    started_ = SteadyClock::now();
    if (ec) return on_read_error(ec);
    endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
    arm(shared_->config.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec2, std::size_t) { self->on_body(ec2); });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return refuse(error_reply(413, "body_too_large",
                                "request body over the limit of " +
                                    std::to_string(shared_->config.max_body_bytes) + " bytes",
                                "send a smaller body, or raise 'cairn-control serve --max-body'"));
    }
    if (ec == http::error::header_limit) {
      return refuse(error_reply(431, "headers_too_large",
                                "request headers over the limit of " +
                                    std::to_string(shared_->config.max_header_bytes) + " bytes",
                                "send fewer or shorter headers"));
    }
    if (timed_out_ || is_quiet_close(ec)) {
      if (timed_out_) log::debug("control.connection_timeout", {{"requests", requests_}});
      return close_now();
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category()) {
      return refuse(error_reply(400, "malformed_http", "malformed HTTP request: " + ec.message(),
                                "send HTTP/1.1 with a valid request line and headers"));
    }
    log::debug("control.read_failed", {{"error", ec.message()}});
    close_now();
  }

  void refuse(Reply reply) {
    shared_->in_flight.fetch_add(1, std::memory_order_relaxed);
    if (started_ == SteadyClock::time_point{}) started_ = SteadyClock::now();
    if (parser_ && parser_->is_header_done()) endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
    reply.close = true;
    drain_after_write_ = true;
    send(std::move(reply));
  }

  void on_body(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    shared_->in_flight.fetch_add(1, std::memory_order_relaxed);
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
    auto done = [self = shared_from_this()](Reply reply) {
      // The answer may come from the heartbeat writer's thread: back onto our strand.
      asio::post(self->stream_.get_executor(),
                 [self, reply = std::move(reply)]() mutable { self->send(std::move(reply)); });
    };
    try {
      route(shared_->service, shared_->metrics, route_request, std::move(done));
    } catch (const std::exception& e) {
      // A bug of ours; the connection answers 500 and the server keeps running.
      log::error("control.route_failed", {{"target", route_request.target}, {"error", e.what()}});
      send(error_reply(500, "internal", std::string("internal error: ") + e.what(),
                       "this is a bug in cairn-control; report it with the control log"));
    }
  }

  void send(Reply reply) {
    ++requests_;
    const unsigned version = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
    const bool client_keep_alive = parser_ && parser_->is_header_done() && parser_->get().keep_alive();
    const auto& cfg = shared_->config;
    keep_alive_ = client_keep_alive && !reply.close && !shared_->stopping.load(std::memory_order_relaxed) &&
                  (cfg.max_requests_per_connection == 0 || requests_ < cfg.max_requests_per_connection);
    res_.emplace(static_cast<http::status>(reply.status), version);
    res_->set(http::field::server, "cairn-control");
    res_->set(http::field::content_type, beast::string_view(reply.content_type.data(), reply.content_type.size()));
    res_->keep_alive(keep_alive_);
    res_->body() = std::move(reply.body);
    res_->prepare_payload();
    shared_->metrics.record_request(endpoint_, reply.status, SteadyClock::now() - started_);
    arm(cfg.body_timeout);
    http::async_write(stream_, *res_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_write(ec);
    });
  }

  void on_write(beast::error_code ec) {
    shared_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    started_ = {};
    res_.reset();
    if (ec) return close_now();
    if (drain_after_write_) return drain(0);
    if (!keep_alive_) return shutdown();
    parser_.reset();
    // Idle connections hold no request memory (10k idle agents is the normal case).
    if (buffer_.size() == 0) buffer_.shrink_to_fit();
    wait_request();
  }

  // After refusing a request whose body is still arriving, read and drop it for a moment
  // before closing: closing with unread data makes the kernel send a RST, and the client
  // would see "connection reset" instead of our 413 (RFC 9112 9.6, "lingering close").
  void drain(std::size_t drained) {
    constexpr std::size_t kDrainLimit = 8 << 20;
    if (drained == 0) arm(std::chrono::seconds(2));
    buffer_.consume(buffer_.size());
    if (drained > kDrainLimit) return close_now();
    stream_.async_read_some(buffer_.prepare(16 << 10),
                            [self = shared_from_this(), drained](beast::error_code ec, std::size_t n) {
                              if (ec) return self->close_now();
                              self->buffer_.commit(n);
                              self->drain(drained + n);
                            });
  }

  void shutdown() {
    timer_.cancel();
    stream_.shutdown_and_close();
  }

  void close_now() {
    timer_.cancel();
    stream_.close();
  }

  // One deadline for whatever the connection is waiting on now; on expiry the socket is
  // closed, which fails the pending operation (seen as timed_out_).
  void arm(std::chrono::steady_clock::duration timeout) {
    timer_.expires_after(timeout);
    timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        self->timed_out_ = true;
        self->stream_.close();
      }
    });
  }

  std::shared_ptr<Shared> shared_;
  TlsStream stream_;
  asio::steady_timer timer_;
  bool timed_out_ = false;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
  Peer peer_;
  std::string peer_error_;
  std::size_t requests_ = 0;
  bool keep_alive_ = false;
  bool drain_after_write_ = false;
  Endpoint endpoint_ = Endpoint::other;
  SteadyClock::time_point started_{};
};

Status load_tls(SSL_CTX* ctx, const ServerConfig& cfg) {
  if (ctx == nullptr) return fail(Errc::internal, "SSL_CTX_new: " + openssl_error());
  // TLS 1.2 minimum; 1.3 is negotiated whenever the client offers it.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  // Frees the record buffers of an idle connection (man SSL_CTX_set_mode).
  // PARTIAL_WRITE + MOVING_BUFFER: TlsStream is driven by Beast's write loop (man SSL_write).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // No TLS 1.3 session tickets: each one keeps an SSL_SESSION (~8 KiB measured) per
  // connection, and agents keep one connection open for days; a reconnect is a full
  // (cheap, Ed25519/P-256) handshake.
  SSL_CTX_set_num_tickets(ctx, 0);
  // Read whole TLS records (and what follows) in one read() instead of header, then body:
  // one syscall less per request. TlsStream::async_wait_readable checks SSL_has_pending, so
  // bytes read ahead are never left waiting for socket readiness.
  SSL_CTX_set_read_ahead(ctx, 1);
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
  BeastServer(ServerConfig config, ControlService& service, Metrics& metrics)
      : threads_(config.threads > 0 ? config.threads
                                    : static_cast<int>(std::max(1U, std::thread::hardware_concurrency()))),
        ioc_(threads_),
        shared_(std::make_shared<Shared>(std::move(config), service, metrics)),
        acceptor_(asio::make_strand(ioc_)),
        signals_(ioc_),
        grace_timer_(ioc_),
        backoff_timer_(acceptor_.get_executor()) {}

  ~BeastServer() override {
    // Drop every connection before the io_context goes (it owns their sockets' services).
    ioc_.stop();
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
    asio::dispatch(acceptor_.get_executor(), [this] { accept(); });
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads_ - 1));
    for (int i = 1; i < threads_; ++i) pool.emplace_back([this] { run_loop(); });
    run_loop();
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
  void run_loop() {
    for (;;) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {
        log::error("control.handler_failed", {{"error", e.what()}});
      }
    }
  }

  void wait_in_flight() {
    if (shared_->in_flight.load() <= 0 || SteadyClock::now() >= grace_deadline_) {
      ioc_.stop();
      return;
    }
    grace_timer_.expires_after(std::chrono::milliseconds(20));
    grace_timer_.async_wait([this](beast::error_code) { wait_in_flight(); });
  }

  void accept() {
    acceptor_.async_accept(asio::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
      on_accept(ec, std::move(socket));
    });
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
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
      std::make_shared<Session>(std::move(socket), shared_)->start();
    }
    accept();
  }

  int threads_;
  asio::io_context ioc_;
  std::shared_ptr<Shared> shared_;
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer grace_timer_;
  asio::steady_timer backoff_timer_;
  SteadyClock::time_point grace_deadline_{};
  std::uint16_t port_ = 0;
  std::uint64_t refused_logged_ = 0;
};

}  // namespace

Result<std::unique_ptr<Server>> Server::create(ServerConfig config, ControlService& service,
                                               Metrics& metrics) {
  // TlsStream lets OpenSSL write() the socket itself (no MSG_NOSIGNAL): without this, a client
  // that disconnects while its answer is being written kills the process with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    auto server = std::make_unique<BeastServer>(std::move(config), service, metrics);
    if (auto ok = server->init(); !ok) return fail(ok.error());
    return std::unique_ptr<Server>(std::move(server));
  } catch (const std::exception& e) {
    return fail(Errc::internal, std::string("starting the HTTPS server: ") + e.what(),
                "this is a bug in cairn-control; report it with the log");
  }
}

}  // namespace cairn::control::server
