// The benchmark's baseline: an HTTPS responder with cairn-control's TLS setup (TlsStream,
// same SSL_CTX options, client certificate requested and read) that answers every request with
// a fixed heartbeat-shaped JSON body — no routing, no logic, no storage. control_load runs the
// same load against it, so the ratio shows what our logic and storage cost.
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <sys/resource.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "control/server/tls_stream.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using cairn::control::server::TlsStream;

constexpr std::string_view kBody =
    R"({"desired_modules":[],"server_time":"2026-01-01T00:00:00.000Z","next_interval_s":30})";

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, SSL_CTX* ctx) : stream_(std::move(socket), ctx) {}

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      self->stream_.async_handshake([self](beast::error_code ec) {
        if (ec) return self->stream_.close();
        self->read_peer();
        self->wait_request();
      });
    });
  }

 private:
  // As the real server does once per connection: the verdict and the certificate's fields.
  void read_peer() {
    SSL* ssl = stream_.native_handle();
    if (X509* cert = SSL_get0_peer_certificate(ssl); cert != nullptr && SSL_get_verify_result(ssl) == X509_V_OK) {
      peer_cn_ = cairn::cert_info(cert).subject_cn;
    }
  }

  void wait_request() {
    if (buffer_.size() > 0) return read();
    stream_.async_wait_readable([self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->stream_.close();
      self->read();
    });
  }

  void read() {
    parser_.emplace();
    parser_->body_limit(1 << 20);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->stream_.close();
      self->reply();
    });
  }

  void reply() {
    const auto& req = parser_->get();
    res_.emplace(http::status::ok, req.version());
    res_->set(http::field::server, "trivial");
    res_->set(http::field::content_type, "application/json");
    res_->keep_alive(req.keep_alive());
    res_->body() = kBody;
    res_->prepare_payload();
    http::async_write(stream_, *res_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      const bool keep = self->res_->keep_alive();
      self->res_.reset();
      self->parser_.reset();
      if (ec || !keep) return self->stream_.shutdown_and_close();
      if (self->buffer_.size() == 0) self->buffer_.shrink_to_fit();
      self->wait_request();
    });
  }

  TlsStream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
  std::string peer_cn_;
};

// The SSL_CTX settings of control/server/server.cpp (load_tls), for a like-for-like baseline.
cairn::SslCtxPtr server_context(const std::string& state) {
  cairn::SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_read_ahead(c, 1);
  const std::string cert = state + "/server.crt", key = state + "/server.key", ca = state + "/ca.crt";
  if (SSL_CTX_use_certificate_chain_file(c, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(c, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(c, ca.c_str(), nullptr) != 1) {
    throw std::runtime_error("TLS files in " + state + ": " + cairn::openssl_error() +
                             " (run 'cairn-control init --state DIR' first)");
  }
  if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str())) SSL_CTX_set_client_CA_list(c, names);
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  static constexpr unsigned char kSessionContext[] = "cairn-control";
  SSL_CTX_set_session_id_context(c, kSessionContext, sizeof(kSessionContext) - 1);
  return ctx;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string state, listen = "127.0.0.1:0", port_file;
    int threads = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--state") state = argv[i + 1];
      else if (flag == "--listen") listen = argv[i + 1];
      else if (flag == "--port-file") port_file = argv[i + 1];
      else if (flag == "--threads") threads = std::stoi(argv[i + 1]);
      else throw std::runtime_error("unknown flag " + flag);
    }
    if (state.empty()) throw std::runtime_error("usage: trivial_responder --state DIR [--listen HOST:PORT] [--port-file F]");
    std::signal(SIGPIPE, SIG_IGN);  // as cairn-control: OpenSSL write()s the socket itself
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
      lim.rlim_cur = lim.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &lim);
    }
    auto ctx = server_context(state);
    asio::io_context ioc(threads);
    const auto colon = listen.rfind(':');
    const tcp::endpoint ep(asio::ip::make_address(listen.substr(0, colon)),
                           static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1))));
    tcp::acceptor acceptor(asio::make_strand(ioc));
    acceptor.open(ep.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen(asio::socket_base::max_listen_connections);
    if (!port_file.empty()) {
      const std::string tmp = port_file + ".tmp";
      std::ofstream(tmp) << acceptor.local_endpoint().port() << "\n";
      std::rename(tmp.c_str(), port_file.c_str());
    }
    std::function<void()> accept = [&] {
      acceptor.async_accept(asio::make_strand(ioc), [&](beast::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted) return;
        if (!ec) {
          socket.set_option(tcp::no_delay(true), ec);
          std::make_shared<Session>(std::move(socket), ctx.get())->start();
        }
        accept();
      });
    };
    asio::dispatch(acceptor.get_executor(), accept);
    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](beast::error_code, int) { ioc.stop(); });
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool) t.join();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "trivial_responder: " << e.what() << "\n";
    return 1;
  }
}
