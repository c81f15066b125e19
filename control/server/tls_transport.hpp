// One TLS connection on a non-blocking socket, for a reactor loop. OpenSSL does the handshake
// and certificate checks; for TLS 1.3 the record layer (RFC 8446 §5) then runs here with the
// traffic secrets OpenSSL derived, and OpenSSL's per-connection state is freed. This is what
// kernel TLS offload does (SSL_OP_ENABLE_KTLS), in user space because this kernel has no tls
// ULP: an idle mTLS connection costs ~0.3 KiB here instead of ~18 KiB of SSL object, session,
// peer certificate and cipher contexts (heaptrack, tools/bench). TLS 1.2 and suites other than
// AES-GCM / ChaCha20-Poly1305 keep using SSL_read/SSL_write.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/ssl.hpp"

namespace cairn::control::server {

enum class IoStatus {
  ok,          // progress: bytes moved (read may return ok with 0 bytes of application data)
  want_read,   // wait until the socket is readable, then call again
  want_write,  // wait until the socket is writable, then call again (or flush())
  closed,      // the peer closed (close_notify or TCP FIN)
  failed,      // protocol or socket error; error() says which
};

struct IoResult {
  IoStatus status = IoStatus::ok;
  std::size_t bytes = 0;
};

// The context settings the transport relies on: the traffic-secret capture (keylog callback,
// kept in memory only and wiped after use) and no read-ahead, so that when the handshake
// completes OpenSSL has read nothing past the peer's Finished.
void prepare_tls_context(SSL_CTX* ctx);

class TlsTransport {
 public:
  enum class Role { server, client };

  // `fd` stays owned by the caller and must be non-blocking; `ctx` went through
  // prepare_tls_context().
  TlsTransport(int fd, SSL_CTX* ctx, Role role);
  ~TlsTransport();
  TlsTransport(const TlsTransport&) = delete;
  TlsTransport& operator=(const TlsTransport&) = delete;

  [[nodiscard]] bool valid() const { return ssl_ != nullptr || offloaded_; }
  IoResult handshake();
  // The handshake's SSL (peer certificate, verify result, version); nullptr after offload().
  [[nodiscard]] SSL* ssl() const { return ssl_.get(); }

  // After the handshake (one chance): moves a TLS 1.3 connection onto the built-in record layer
  // and frees the SSL. Returns false (and keeps using OpenSSL) when that is not possible.
  bool offload();

  // Reads what the socket has (one read) and appends the application data to `out`, at most
  // about `max` bytes. ok with 0 bytes happens for records without data (KeyUpdate). Data that
  // came before the peer's close_notify is returned first (ok); the next call says closed.
  IoResult read(std::string& out, std::size_t max);
  // The peer sent close_notify (offloaded connections): nothing more will be read.
  [[nodiscard]] bool peer_closed() const { return peer_closed_; }
  // Protects and sends `plaintext`; what the socket does not take now is kept (want_write:
  // call flush() when writable).
  IoResult write(std::string_view plaintext);
  IoResult flush();
  // Sends close_notify if the socket takes it at once; never waits.
  void send_close_notify();
  // Frees buffers an idle connection does not need.
  void release_buffers();

  [[nodiscard]] const std::string& error() const { return error_; }

  // One direction of the offloaded record layer (public for the key-capture callback).
  struct Direction {
    std::array<unsigned char, 48> secret{};
    std::size_t secret_len = 0;
    std::array<unsigned char, 32> key{};
    std::array<unsigned char, 12> iv{};
    std::uint64_t seq = 0;
  };
  void capture_secret(std::string_view label, const unsigned char* secret, std::size_t len);

 private:
  // Records the error and ends the connection for good; on an offloaded connection `alert`
  // (RFC 8446 §6.2 AlertDescription, 0 for none) is sent to the peer if the socket takes it.
  IoResult fail(std::string message, unsigned char alert = 0);
  IoResult read_openssl(std::string& out, std::size_t max);
  IoResult write_openssl(std::string_view plaintext);
  IoResult send_pending();
  bool seal(Direction& d, unsigned char type, std::string_view plain, std::string& out);
  // Decrypts one whole record in place; appends its data to `out`. closed / failed / ok.
  IoResult open_record(unsigned char* record, std::size_t size, std::string& out);
  IoResult on_handshake_message(std::string_view messages);
  bool update_keys(Direction& d);
  bool send_key_update();

  int fd_;
  Role role_;
  SslPtr ssl_;
  bool offloaded_ = false;
  bool broken_ = false;           // failed: every later call fails
  bool peer_closed_ = false;      // close_notify received: later records are ignored (§6.1)
  bool key_update_owed_ = false;  // the peer asked for a KeyUpdate that is not sent yet
  bool alert_sent_ = false;
  unsigned empty_records_ = 0;    // records in a row without application data
  int suite_ = 0;  // index into the supported suites
  Direction read_{};
  Direction write_{};
  std::string partial_;      // bytes of an incomplete record
  std::string pending_out_;  // protected bytes the socket has not taken yet
  std::string error_;
};

}  // namespace cairn::control::server
