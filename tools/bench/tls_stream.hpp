// The load driver's TLS stream for Beast: OpenSSL reads and writes the non-blocking socket
// itself (SSL_set_fd) and asio only waits for readiness. asio::ssl::stream keeps two 17 KiB
// record buffers plus a 2x17 KiB BIO pair per connection (~90 KiB each measured), too much for
// 10k simulated nodes in one process; here an idle connection holds only the SSL object.
#pragma once

#include <boost/asio/compose.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <optional>
#include <utility>

#include "common/ssl.hpp"

namespace cairn::bench {

class TlsStream {
 public:
  using socket_type = boost::asio::ip::tcp::socket;
  using executor_type = socket_type::executor_type;
  using error_code = boost::beast::error_code;

  TlsStream(socket_type&& socket, SSL_CTX* ctx) : socket_(std::move(socket)), ssl_(SSL_new(ctx)) {
    error_code ignored;
    socket_.non_blocking(true, ignored);
    if (ssl_) {
      SSL_set_fd(ssl_.get(), static_cast<int>(socket_.native_handle()));
      SSL_set_accept_state(ssl_.get());
    }
  }

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  socket_type& socket() { return socket_; }
  SSL* native_handle() { return ssl_.get(); }

  template <class Handler>
  auto async_handshake(Handler&& handler) {
    return boost::asio::async_compose<Handler, void(error_code)>(
        Op<Kind::handshake>{this, nullptr, 0, false, std::nullopt}, handler, socket_);
  }

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    const auto b = first_buffer<boost::asio::mutable_buffer>(buffers);
    return boost::asio::async_compose<Handler, void(error_code, std::size_t)>(
        Op<Kind::read>{this, b.data(), b.size(), false, std::nullopt}, handler, socket_);
  }

  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    const auto b = first_buffer<boost::asio::const_buffer>(buffers);
    return boost::asio::async_compose<Handler, void(error_code, std::size_t)>(
        Op<Kind::write>{this, const_cast<void*>(b.data()), b.size(), false, std::nullopt}, handler, socket_);
  }

  // Completes when the next read can make progress, without holding a read buffer while
  // waiting (idle keep-alive connections are the common case).
  template <class Handler>
  void async_wait_readable(Handler&& handler) {
    if (ssl_ && SSL_has_pending(ssl_.get())) {
      return boost::asio::post(socket_.get_executor(),
                               [h = std::forward<Handler>(handler)]() mutable { h(error_code{}); });
    }
    socket_.async_wait(socket_type::wait_read, std::forward<Handler>(handler));
  }

  // Sends close_notify if the socket takes it right away, then closes. Never waits.
  void shutdown_and_close() {
    if (ssl_ && SSL_is_init_finished(ssl_.get())) {
      ERR_clear_error();
      SSL_shutdown(ssl_.get());
    }
    close();
  }

  void close() {
    error_code ignored;
    socket_.shutdown(socket_type::shutdown_both, ignored);
    socket_.close(ignored);
  }

 private:
  enum class Kind { handshake, read, write };

  template <class Buffer, class Buffers>
  static Buffer first_buffer(const Buffers& buffers) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      Buffer b(*it);
      if (b.size() > 0) return b;
    }
    return Buffer();
  }

  static error_code last_error(int ssl_error) {
    const unsigned long e = ERR_get_error();
    if (e != 0) return error_code(static_cast<int>(e), boost::asio::error::get_ssl_category());
    if (ssl_error == SSL_ERROR_SYSCALL && errno != 0 && errno != EAGAIN) {
      return error_code(errno, boost::system::system_category());
    }
    // The peer closed TCP without close_notify.
    return boost::asio::ssl::error::stream_truncated;
  }

  template <Kind K>
  struct Op {
    TlsStream* stream;
    void* data;
    std::size_t size;
    bool started = false;
    std::optional<std::pair<error_code, std::size_t>> ready;  // completed inside the initiation

    template <class Self>
    void operator()(Self& self, error_code ec = {}) {
      if (ready) return finish(self, ready->first, ready->second);
      const bool initiating = !started;
      started = true;
      if (ec) return finish(self, ec, 0);
      SSL* ssl = stream->ssl_.get();
      if (ssl == nullptr) return finish(self, boost::asio::error::no_memory, 0);
      if constexpr (K != Kind::handshake) {
        if (size == 0) return complete_soon(self, initiating, {}, 0);
      }
      ERR_clear_error();
      errno = 0;
      std::size_t n = 0;
      int rc = 0;
      if constexpr (K == Kind::handshake) rc = SSL_do_handshake(ssl);
      else if constexpr (K == Kind::read) rc = SSL_read_ex(ssl, data, size, &n);
      else rc = SSL_write_ex(ssl, data, size, &n);
      if (rc == 1) return complete_soon(self, initiating, {}, n);
      const int err = SSL_get_error(ssl, rc);
      switch (err) {
        case SSL_ERROR_WANT_READ:
          return stream->socket_.async_wait(socket_type::wait_read, std::move(self));
        case SSL_ERROR_WANT_WRITE:
          return stream->socket_.async_wait(socket_type::wait_write, std::move(self));
        case SSL_ERROR_ZERO_RETURN:
          return complete_soon(self, initiating, boost::asio::error::eof, 0);
        default:
          return complete_soon(self, initiating, last_error(err), 0);
      }
    }

    // A handler is never called from inside its initiating function (asio's rule): post.
    template <class Self>
    void complete_soon(Self& self, bool initiating, error_code ec, std::size_t n) {
      if (!initiating) return finish(self, ec, n);
      ready.emplace(ec, n);
      boost::asio::post(stream->socket_.get_executor(), std::move(self));
    }

    template <class Self>
    static void finish(Self& self, error_code ec, std::size_t n) {
      if constexpr (K == Kind::handshake) self.complete(ec);
      else self.complete(ec, n);
    }
  };

  socket_type socket_;
  SslPtr ssl_;
};

}  // namespace cairn::bench
