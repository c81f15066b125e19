#include "control/server/metrics_listener.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <atomic>

#include "common/log.hpp"

namespace cairn::control::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kTimeout = std::chrono::seconds(10);
constexpr std::uint32_t kHeaderLimit = 8 << 10;
constexpr std::size_t kMaxConnections = 64;  // scrapers and probes, not a fleet

// Shared by the listener and its exchanges, which may outlive it inside a stopped io_context.
struct ListenerState {
  RequestHandler handler;
  std::atomic<std::size_t> open{0};
};

class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(tcp::socket&& socket, std::shared_ptr<ListenerState> state)
      : stream_(std::move(socket)), state_(std::move(state)) {
    state_->open.fetch_add(1);
  }
  ~Exchange() { state_->open.fetch_sub(1); }

  void start() {
    parser_.header_limit(kHeaderLimit);
    parser_.body_limit(0);
    stream_.expires_after(kTimeout);
    http::async_read(stream_, buffer_, parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->answer();
    });
  }

 private:
  void answer() {
    const auto& req = parser_.get();
    const std::string target(req.target());
    const bool known = req.method() == http::verb::get && (target == "/metrics" || target == "/healthz");
    if (!known) {
      reply_ = error_reply(404, "not_found", "the metrics listener serves only GET /metrics and GET /healthz",
                           "send API requests to the HTTPS listener");
      return write();
    }
    RouteRequest request{.method = "GET", .target = target, .authorization = {}, .body = {}, .peer = {},
                         .peer_cert_error = {}};
    // /metrics and /healthz answer at once, inside the call.
    state_->handler(request, [this](Reply r) { reply_ = std::move(r); });
    write();
  }

  void write() {
    response_.result(static_cast<http::status>(reply_.status));
    response_.set(http::field::server, "cairn-control");
    response_.set(http::field::content_type, beast::string_view(reply_.content_type.data(), reply_.content_type.size()));
    response_.keep_alive(false);
    response_.body() = std::move(reply_.body);
    response_.prepare_payload();
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code, std::size_t) {
      self->close();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  std::shared_ptr<ListenerState> state_;
  beast::flat_buffer buffer_{kHeaderLimit};
  http::request_parser<http::empty_body> parser_;
  Reply reply_;
  http::response<http::string_body> response_;
};

class BeastMetricsListener final : public MetricsListener {
 public:
  BeastMetricsListener(asio::io_context& ioc, RequestHandler handler)
      : ioc_(ioc), acceptor_(ioc), backoff_(ioc), state_(std::make_shared<ListenerState>()) {
    state_->handler = std::move(handler);
  }

  Status init(const std::string& host, std::uint16_t port) {
    beast::error_code ec;
    const auto address = asio::ip::make_address(host, ec);
    if (ec) {
      return fail(Errc::usage, "--metrics-listen address '" + host + "': not an IP address",
                  "use an IP literal such as 127.0.0.1 or [::1]");
    }
    const tcp::endpoint endpoint(address, port);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return fail(Errc::unavailable, "metrics listener on " + host + ":" + std::to_string(port) + ": " + ec.message(),
                  "pick a free port with --metrics-listen");
    }
    port_ = acceptor_.local_endpoint(ec).port();
    return {};
  }

  [[nodiscard]] std::uint16_t port() const override { return port_; }
  void start() override { accept(); }
  void stop() override {
    beast::error_code ignored;
    acceptor_.close(ignored);
    backoff_.cancel();
  }

 private:
  void accept() {
    acceptor_.async_accept(ioc_, [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (ec) {  // EMFILE and friends: back off instead of spinning on the ready listener
        log::warn("control.metrics_accept_failed", {{"error", ec.message()}});
        backoff_.expires_after(std::chrono::milliseconds(100));
        backoff_.async_wait([this](beast::error_code e) {
          if (!e) accept();
        });
        return;
      }
      if (state_->open.load() >= kMaxConnections) {
        beast::error_code ignored;
        socket.close(ignored);
      } else {
        std::make_shared<Exchange>(std::move(socket), state_)->start();
      }
      accept();
    });
  }

  asio::io_context& ioc_;
  tcp::acceptor acceptor_;
  asio::steady_timer backoff_;
  std::shared_ptr<ListenerState> state_;
  std::uint16_t port_ = 0;
};

}  // namespace

Result<std::unique_ptr<MetricsListener>> MetricsListener::create(asio::io_context& ioc, const std::string& host,
                                                                 std::uint16_t port, RequestHandler handler) {
  auto listener = std::make_unique<BeastMetricsListener>(ioc, std::move(handler));
  if (auto ok = listener->init(host, port); !ok) return fail(ok.error());
  return std::unique_ptr<MetricsListener>(std::move(listener));
}

}  // namespace cairn::control::server
