#include "control/server/session.hpp"

#include <boost/asio/post.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>

#include <openssl/err.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/crypto.hpp"
#include "common/log.hpp"

namespace cairn::control::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Reads of one connection per turn: one fast sender cannot hold its worker.
constexpr int kReadsPerTurn = 16;
// A lingering close reads at most this much, for at most this long, before it gives up.
constexpr std::size_t kDrainLimit = 8 << 20;
constexpr auto kDrainTime = std::chrono::seconds(2);

std::string_view to_sv(beast::string_view v) { return {v.data(), v.size()}; }

}  // namespace

Session::Session(tcp::socket&& socket, ServerShared& shared, Worker& worker)
    : shared_(shared), worker_(worker), socket_(std::move(socket)), ssl_(SSL_new(shared.tls.get())) {
  shared_.metrics.connection_opened();
  beast::error_code ignored;
  socket_.non_blocking(true, ignored);
  if (ssl_) {
    SSL_set_fd(ssl_.get(), static_cast<int>(socket_.native_handle()));
    SSL_set_accept_state(ssl_.get());
  }
}

Session::~Session() { shared_.metrics.connection_closed(); }

void Session::start() {
  slot_ = worker_.sessions.size();
  worker_.sessions.push_back(shared_from_this());
  if (!ssl_) {
    log::warn("control.connection_failed", {{"error", "SSL_new: " + openssl_error()}});
    return close_now();
  }
  deadline_ = SteadyClock::now() + shared_.config.handshake_timeout;
  turn();
}

void Session::close_if_idle() {
  if (!closed_ && phase_ == Phase::reading && !parser_ && in_pos_ >= in_.size()) close_now();
}

void Session::expire_if_due(SteadyClock::time_point now) {
  if (closed_ || now < deadline_) return;
  log::debug("control.connection_timeout", {{"requests", requests_}, {"phase", static_cast<int>(phase_)}});
  close_now();
}

void Session::turn() {
  std::size_t handled = 0;
  int reads = 0;
  for (;;) {
    if (closed_) return;
    switch (phase_) {
      case Phase::handshake:
        switch (handshake()) {
          case Io::done: on_handshake_done(); continue;
          case Io::again: return;
          case Io::closed:
          case Io::failed:
            shared_.metrics.tls_handshake_failed();
            return close_now();
        }
        return;
      case Phase::reading:
        if (parse()) {
          if (++handled >= shared_.config.requests_per_turn) {
            // A request still with the handler resumes the turn with its answer; posting
            // another turn as well would arm a second readiness wait.
            if (phase_ != Phase::handling) yield();
            return;
          }
          continue;
        }
        if (++reads > kReadsPerTurn) return yield();
        switch (read_some()) {
          case Io::done: continue;
          case Io::again: return;
          case Io::closed:
          case Io::failed: return close_now();
        }
        return;
      case Phase::handling:
        return;  // answer() resumes
      case Phase::writing:
        switch (write_some()) {
          case Io::done: after_write(); continue;
          case Io::again: return;
          case Io::closed:
          case Io::failed: return close_now();
        }
        return;
      case Phase::closing:
        if (++reads > kReadsPerTurn) return yield();
        switch (drain()) {
          case Io::done: continue;
          case Io::again: return;
          case Io::closed:
          case Io::failed: return close_now();
        }
        return;
    }
  }
}

void Session::yield() {
  asio::post(worker_.ioc, [self = shared_from_this()] { self->turn(); });
}

// Maps an OpenSSL call's outcome; on want-read/want-write arms the one readiness wait whose
// completion runs the next turn.
Session::Io Session::tls_result(int rc) {
  if (rc == 1) return Io::done;
  const int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    const auto what = err == SSL_ERROR_WANT_READ ? tcp::socket::wait_read : tcp::socket::wait_write;
    socket_.async_wait(what, [self = shared_from_this()](beast::error_code ec) {
      if (self->closed_) return;
      if (ec) return self->close_now();
      self->turn();
    });
    return Io::again;
  }
  if (err == SSL_ERROR_ZERO_RETURN) return Io::closed;  // the peer's close_notify
  tls_failed_ = true;
  const int saved_errno = errno;
  std::string why;
  if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    why = saved_errno != 0 ? std::string(std::strerror(saved_errno)) : "connection closed without close_notify";
  } else {
    why = openssl_error();
  }
  log::debug("control.tls_failed", {{"phase", static_cast<int>(phase_)}, {"error", why}});
  return Io::failed;
}

Session::Io Session::handshake() {
  ERR_clear_error();
  errno = 0;
  return tls_result(SSL_do_handshake(ssl_.get()));
}

void Session::on_handshake_done() {
  SSL* ssl = ssl_.get();
  if (X509* cert = SSL_get0_peer_certificate(ssl); cert != nullptr) {
    // The verify callback accepted every chain so a wrong certificate gets a JSON 401 instead
    // of a bare alert; SSL_get_verify_result() keeps the real verdict.
    const long verdict = SSL_get_verify_result(ssl);
    if (verdict != X509_V_OK) {
      peer_error_ = X509_verify_cert_error_string(verdict);
      shared_.metrics.tls_handshake_failed();
    } else {
      const CertInfo info = cert_info(cert);
      peer_.has_cert = true;
      peer_.subject_cn = info.subject_cn;
      peer_.serial_hex = info.serial_hex;
    }
  }
#ifndef OPENSSL_NO_KTLS
  if (shared_.config.kernel_tls && BIO_get_ktls_send(SSL_get_wbio(ssl)) != 0) {
    shared_.metrics.kernel_tls_connection();
  }
#endif
  phase_ = Phase::reading;
  deadline_ = SteadyClock::now() + shared_.config.header_timeout;  // the first request comes at once
}

// One SSL_read into the worker's buffer; what it returns is appended to in_.
Session::Io Session::read_some() {
  if (in_pos_ > 0) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
  std::size_t n = 0;
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_read_ex(ssl_.get(), worker_.scratch.data(), worker_.scratch.size(), &n);
  if (rc == 1) in_.append(worker_.scratch.data(), n);
  return tls_result(rc);
}

bool Session::parse() {
  if (in_pos_ >= in_.size()) {
    in_.clear();
    in_pos_ = 0;
    return false;
  }
  const auto now = SteadyClock::now();
  if (!parser_) {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(shared_.config.max_header_bytes));
    parser_->body_limit(shared_.config.max_body_bytes);
    parser_->eager(true);
    header_seen_ = false;
    endpoint_ = Endpoint::other;
    started_ = now;
    deadline_ = now + shared_.config.header_timeout;
  }
  beast::error_code ec;
  while (in_pos_ < in_.size() && !parser_->is_done()) {
    const std::size_t n = parser_->put(asio::buffer(in_.data() + in_pos_, in_.size() - in_pos_), ec);
    in_pos_ += n;
    if (ec == http::error::need_more) {
      ec = {};
      // Beast bounds the header but not a chunk line or the trailer (Boost 1.74): what it
      // cannot consume yet is capped here, or a client could grow in_ without end.
      if (in_.size() - in_pos_ > shared_.config.max_header_bytes) {
        refuse(error_reply(431, "headers_too_large",
                           "a request line, header, chunk line or trailer over the limit of " +
                               std::to_string(shared_.config.max_header_bytes) + " bytes",
                           "send fewer or shorter headers and chunk extensions"));
        return true;
      }
      break;
    }
    if (ec) {
      on_parse_error(ec);
      return true;
    }
    if (n == 0) break;
  }
  if (!header_seen_ && parser_->is_header_done()) {
    header_seen_ = true;
    endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
    deadline_ = now + shared_.config.body_timeout;
  }
  if (!parser_->is_done()) return false;
  dispatch();
  return true;
}

void Session::on_parse_error(beast::error_code ec) {
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

void Session::begin_request() {
  if (in_flight_) return;
  in_flight_ = true;
  shared_.in_flight.fetch_add(1, std::memory_order_relaxed);
  deadline_ = SteadyClock::now() + shared_.config.body_timeout;
}

void Session::end_request() {
  if (!in_flight_) return;
  in_flight_ = false;
  shared_.in_flight.fetch_sub(1, std::memory_order_relaxed);
}

// The answer goes out, then the connection closes (begin_closing reads off what the client
// is still sending first).
void Session::refuse(Reply reply) {
  begin_request();
  if (parser_ && parser_->is_header_done()) endpoint_ = classify_endpoint(to_sv(parser_->get().target()));
  reply.close = true;
  answer(std::move(reply));
}

void Session::dispatch() {
  begin_request();
  phase_ = Phase::handling;
  if (endpoint_ == Endpoint::metrics && shared_.config.metrics_port != 0) {
    return answer(error_reply(404, "not_found", "/metrics is not served on this listener",
                              "scrape the metrics address given to 'cairn-control serve --metrics-listen'"));
  }
  if (endpoint_ == Endpoint::enroll && !shared_.enroll_bucket.try_take(SteadyClock::now())) {
    shared_.metrics.enroll_throttled();
    return answer(error_reply(429, "enroll_rate_limited", "too many enrollments right now",
                              "retry after the Retry-After delay (with jitter); operators can raise "
                              "'cairn-control serve --enroll-rate'"));
  }
  const auto& req = parser_->get();
  RouteRequest route_request{
      .method = to_sv(req.method_string()),
      .target = to_sv(req.target()),
      .authorization = {},
      .body = req.body(),
      .peer = peer_,
      .peer_cert_error = peer_error_,
  };
  if (auto it = req.find(http::field::authorization); it != req.end()) route_request.authorization = to_sv(it->value());
  // An answer computed inside the handler is taken after it returns (the request it reads
  // lives in parser_); heartbeat answers come from the writer thread after the commit.
  const std::uint64_t request = ++request_seq_;
  auto done = [self = shared_from_this(), request](Reply reply) {
    if (self->worker_.ioc.get_executor().running_in_this_thread() && self->in_route_) {
      self->sync_reply_ = std::move(reply);
      return;
    }
    asio::post(self->worker_.ioc, [self, request, reply = std::move(reply)]() mutable {
      // A late answer to an earlier request (its handler threw after handing `done` on) must
      // not answer the one being handled now.
      if (self->closed_ || self->phase_ != Phase::handling || self->request_seq_ != request) return;
      self->answer(std::move(reply));
      self->turn();
    });
  };
  // What waits on the store leaves the io thread: the request is copied (parser_ is reused by
  // the next one), the answer comes back through `done` as a heartbeat's does.
  const bool on_store_pool = shared_.store_pool != nullptr && endpoint_ != Endpoint::heartbeat &&
                             endpoint_ != Endpoint::healthz && endpoint_ != Endpoint::metrics;
  if (on_store_pool) {
    struct Owned {
      std::string method, target, authorization, body;
      Peer peer;
      std::string peer_cert_error;
    };
    auto owned = std::make_shared<Owned>(Owned{std::string(route_request.method), std::string(route_request.target),
                                               std::string(route_request.authorization), std::string(route_request.body),
                                               route_request.peer, std::string(route_request.peer_cert_error)});
    boost::asio::post(*shared_.store_pool, [self = shared_from_this(), owned, done = std::move(done)]() mutable {
      const RouteRequest request{.method = owned->method,
                                 .target = owned->target,
                                 .authorization = owned->authorization,
                                 .body = owned->body,
                                 .peer = owned->peer,
                                 .peer_cert_error = owned->peer_cert_error};
      ReplyFn reply = done;  // `done` answers once; a late second call is dropped by its request check
      try {
        self->shared_.handler(request, std::move(done));
      } catch (const std::exception& e) {
        log::error("control.route_failed", {{"target", request.target}, {"error", e.what()}});
        reply(error_reply(500, "internal", std::string("internal error: ") + e.what(),
                          "this is a bug in cairn-control; report it with the control log"));
      }
    });
    return;
  }
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
    answer(std::move(reply));
  }
}

void Session::answer(Reply reply) {
  ++requests_;
  const bool have_header = parser_ && parser_->is_header_done();
  const unsigned version = have_header ? parser_->get().version() : 11;
  head_request_ = have_header && parser_->get().method() == http::verb::head;
  const auto& cfg = shared_.config;
  keep_alive_ = have_header && parser_->get().keep_alive() && !reply.close &&
                !shared_.stopping.load(std::memory_order_relaxed) &&
                (cfg.max_requests_per_connection == 0 || requests_ < cfg.max_requests_per_connection);
  shared_.metrics.record_request(endpoint_, reply.status, SteadyClock::now() - started_);
  out_ = serialize(reply, version);
  out_pos_ = 0;
  phase_ = Phase::writing;
  deadline_ = SteadyClock::now() + cfg.body_timeout;
}

// Status line, headers and body in one buffer: one SSL_write, one record, one write().
std::string Session::serialize(const Reply& reply, unsigned version) const {
  const auto reason = http::obsolete_reason(static_cast<http::status>(reply.status));
  std::string out;
  out.reserve(288 + reply.body.size());
  out.append("HTTP/1.1 ").append(std::to_string(reply.status)).append(" ").append(reason.data(), reason.size());
  // The API is never a web page, but say so to anything that treats it as one (HSTS, no MIME
  // sniffing, no caching of answers that may carry certificates or tokens).
  out.append("\r\nServer: cairn-control\r\nStrict-Transport-Security: max-age=31536000"
             "\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nContent-Type: ")
      .append(reply.content_type);
  out.append("\r\nContent-Length: ").append(std::to_string(reply.body.size()));
  if (reply.status == 429) {
    out.append("\r\nRetry-After: ").append(std::to_string(shared_.enroll_bucket.retry_after_seconds()));
  } else if (reply.status == 503) {
    out.append("\r\nRetry-After: 1");
  }
  if (!keep_alive_) out.append("\r\nConnection: close");
  else if (version < 11) out.append("\r\nConnection: keep-alive");
  out.append("\r\n\r\n");
  // HEAD: the headers a GET would get, no body (RFC 9110 9.3.2); a body here would be read
  // as the start of the next answer on a keep-alive connection.
  if (!head_request_) out.append(reply.body);
  return out;
}

Session::Io Session::write_some() {
  while (out_pos_ < out_.size()) {
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int rc = SSL_write_ex(ssl_.get(), out_.data() + out_pos_, out_.size() - out_pos_, &n);
    if (rc != 1) return tls_result(rc);
    out_pos_ += n;
  }
  return Io::done;
}

void Session::after_write() {
  end_request();
  started_ = {};
  out_.clear();
  out_pos_ = 0;
  if (!keep_alive_) return begin_closing();
  parser_.reset();
  phase_ = Phase::reading;
  if (in_pos_ < in_.size()) {  // the next request came with this one
    deadline_ = SteadyClock::now() + shared_.config.header_timeout;
    return;
  }
  // Idle: the connection holds no request memory (10k idle agents is the normal case), and
  // OpenSSL gives its record buffers back too (SSL_MODE_RELEASE_BUFFERS).
  std::string().swap(in_);
  std::string().swap(out_);
  in_pos_ = 0;
  deadline_ = SteadyClock::now() + shared_.config.idle_timeout;
}

// Lingering close (RFC 9112 9.6): after our close_notify and FIN, read and drop what the
// client still sends, until its own close or a limit. Closing with unread bytes would make
// the kernel send a RST, and the client could lose our last answer.
void Session::begin_closing() {
  send_close_notify();
  beast::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  phase_ = Phase::closing;
  parser_.reset();
  std::string().swap(in_);
  in_pos_ = 0;
  drained_ = 0;
  deadline_ = SteadyClock::now() + kDrainTime;
}

Session::Io Session::drain() {
  std::size_t n = 0;
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_read_ex(ssl_.get(), worker_.scratch.data(), worker_.scratch.size(), &n);
  if (rc == 1) {
    drained_ += std::max<std::size_t>(n, 1);
    return drained_ > kDrainLimit ? Io::failed : Io::done;
  }
  return tls_result(rc);
}

// Our close_notify, once, if the socket takes it now; never after a fatal TLS error or
// before the handshake finished (man SSL_shutdown).
void Session::send_close_notify() {
  if (close_notify_sent_ || tls_failed_ || !ssl_ || SSL_is_init_finished(ssl_.get()) != 1) return;
  close_notify_sent_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_.get());
  ERR_clear_error();
}

void Session::close_now() {
  if (closed_) return;
  const auto keep = shared_from_this();  // the worker's reference goes below
  send_close_notify();
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

}  // namespace cairn::control::server
