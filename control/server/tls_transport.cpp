// The TLS 1.3 record layer after OpenSSL's handshake. Protocol facts from RFC 8446:
//   §5.1/5.2 record = type(1)=23 | legacy_version(2)=0x0303 | length(2) | AEAD(inner), where
//            inner = content | real type(1) | zero padding, AAD = the 5-byte header,
//            length <= 2^14 + 256;
//   §5.3     nonce = iv XOR (64-bit sequence number, big-endian, left-padded);
//   §7.1     key/iv = HKDF-Expand-Label(traffic secret, "key"/"iv", "", length);
//   §7.2     KeyUpdate: next secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length);
//   §5.5     AES-GCM keys are good for 2^24.5 full records: we update ours well before.
#include "control/server/tls_transport.hpp"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "common/crypto.hpp"

namespace cairn::control::server {
namespace {

constexpr std::size_t kHeader = 5;
constexpr std::size_t kTag = 16;
constexpr std::size_t kMaxPlain = 1 << 14;              // §5.1
constexpr std::size_t kMaxCiphertext = kMaxPlain + 256;  // §5.2
constexpr std::uint64_t kKeyUpdateAfter = 1ULL << 24;   // records, §5.5
constexpr unsigned char kApplicationData = 23;
constexpr unsigned char kAlert = 21;
constexpr unsigned char kHandshake = 22;
constexpr unsigned char kKeyUpdate = 24;
constexpr unsigned char kNewSessionTicket = 4;

struct Suite {
  std::uint16_t id;  // IANA cipher suite value
  const char* cipher;
  const char* digest;
  std::size_t key_len;
  std::size_t hash_len;
};
constexpr std::array<Suite, 3> kSuites{{
    {0x1301, "AES-128-GCM", "SHA256", 16, 32},
    {0x1302, "AES-256-GCM", "SHA384", 32, 48},
    {0x1303, "ChaCha20-Poly1305", "SHA256", 32, 32},
}};

struct Fetched {
  std::array<EVP_CIPHER*, kSuites.size()> ciphers{};
  EVP_KDF* hkdf = nullptr;
};

// Explicit fetches, once: the implicit fetch behind EVP_aes_128_gcm() costs a lookup per use.
const Fetched& fetched() {
  static const Fetched f = [] {
    Fetched out;
    for (std::size_t i = 0; i < kSuites.size(); ++i) out.ciphers[i] = EVP_CIPHER_fetch(nullptr, kSuites[i].cipher, nullptr);
    out.hkdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    return out;
  }();
  return f;
}

// One cipher context per thread, re-keyed per record: an idle connection keeps 28 bytes of
// key material instead of an EVP_CIPHER_CTX (~1 KiB each way).
EVP_CIPHER_CTX* thread_cipher_ctx() {
  thread_local std::unique_ptr<EVP_CIPHER_CTX, OpenSslDeleter<EVP_CIPHER_CTX_free>> ctx(EVP_CIPHER_CTX_new());
  return ctx.get();
}

// Where ciphertext is read into and protected records are built: one per thread.
std::vector<unsigned char>& thread_buffer() {
  thread_local std::vector<unsigned char> buffer(64 << 10);
  return buffer;
}

bool hkdf_expand_label(const Suite& suite, const unsigned char* secret, std::size_t secret_len,
                       std::string_view label, unsigned char* out, std::size_t out_len) {
  const std::string full = "tls13 " + std::string(label);
  std::vector<unsigned char> info;
  info.push_back(static_cast<unsigned char>(out_len >> 8));
  info.push_back(static_cast<unsigned char>(out_len & 0xff));
  info.push_back(static_cast<unsigned char>(full.size()));
  info.insert(info.end(), full.begin(), full.end());
  info.push_back(0);  // empty context
  std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX_free>> kctx(EVP_KDF_CTX_new(fetched().hkdf));
  if (!kctx) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(suite.digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(secret), secret_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_end(),
  };
  return EVP_KDF_derive(kctx.get(), out, out_len, params) == 1;
}

bool derive_key_iv(const Suite& suite, TlsTransport::Direction& d) {
  return hkdf_expand_label(suite, d.secret.data(), d.secret_len, "key", d.key.data(), suite.key_len) &&
         hkdf_expand_label(suite, d.secret.data(), d.secret_len, "iv", d.iv.data(), d.iv.size());
}

void make_nonce(const TlsTransport::Direction& d, unsigned char nonce[12]) {
  std::memcpy(nonce, d.iv.data(), 12);
  for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<unsigned char>(d.seq >> (8 * i));
}

int secret_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// OpenSSL hands TLS 1.3 secrets to the keylog callback as "LABEL <client_random> <secret>" in
// hex (the NSS key log format). We keep the two application traffic secrets of connections
// that asked for them and never write the line anywhere.
void capture_keylog(const SSL* ssl, const char* line) {
  auto* transport = static_cast<TlsTransport*>(SSL_get_ex_data(ssl, secret_index()));
  if (transport == nullptr || line == nullptr) return;
  const std::string_view text(line);
  const auto first = text.find(' ');
  const auto second = first == std::string_view::npos ? first : text.find(' ', first + 1);
  if (second == std::string_view::npos) return;
  const std::string_view label = text.substr(0, first);
  const std::string_view hex = text.substr(second + 1);
  std::array<unsigned char, 64> secret{};
  if (hex.size() % 2 != 0 || hex.size() / 2 > secret.size()) return;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < hex.size() / 2; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    secret[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  transport->capture_secret(label, secret.data(), hex.size() / 2);
  OPENSSL_cleanse(secret.data(), secret.size());
}

std::string ssl_error_text(int ssl_error) {
  const unsigned long e = ERR_get_error();
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
  }
  if (ssl_error == SSL_ERROR_SYSCALL) return errno != 0 ? std::strerror(errno) : "connection closed without close_notify";
  return "TLS error " + std::to_string(ssl_error);
}

}  // namespace

void prepare_tls_context(SSL_CTX* ctx) {
  (void)secret_index();
  (void)fetched();
  SSL_CTX_set_read_ahead(ctx, 0);
  SSL_CTX_set_keylog_callback(ctx, capture_keylog);
}

TlsTransport::TlsTransport(int fd, SSL_CTX* ctx, Role role) : fd_(fd), role_(role), ssl_(SSL_new(ctx)) {
  if (!ssl_) return;
  SSL_set_ex_data(ssl_.get(), secret_index(), this);
  SSL_set_fd(ssl_.get(), fd);
  if (role == Role::server) SSL_set_accept_state(ssl_.get());
  else SSL_set_connect_state(ssl_.get());
}

TlsTransport::~TlsTransport() {
  OPENSSL_cleanse(&read_, sizeof read_);
  OPENSSL_cleanse(&write_, sizeof write_);
}

void TlsTransport::capture_secret(std::string_view label, const unsigned char* secret, std::size_t len) {
  const bool client = label == "CLIENT_TRAFFIC_SECRET_0";
  if ((!client && label != "SERVER_TRAFFIC_SECRET_0") || len > read_.secret.size()) return;
  // The server reads what the client writes and the other way round.
  Direction& d = (client == (role_ == Role::server)) ? read_ : write_;
  std::memcpy(d.secret.data(), secret, len);
  d.secret_len = len;
}

IoResult TlsTransport::fail(std::string message) {
  error_ = std::move(message);
  return {IoStatus::failed, 0};
}

IoResult TlsTransport::handshake() {
  if (!ssl_) return fail("SSL_new: out of memory");
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_do_handshake(ssl_.get());
  if (rc == 1) return {IoStatus::ok, 0};
  const int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ) return {IoStatus::want_read, 0};
  if (err == SSL_ERROR_WANT_WRITE) return {IoStatus::want_write, 0};
  if (err == SSL_ERROR_ZERO_RETURN) return {IoStatus::closed, 0};
  return fail(ssl_error_text(err));
}

bool TlsTransport::offload() {
  if (!ssl_ || offloaded_ || SSL_version(ssl_.get()) != TLS1_3_VERSION || SSL_has_pending(ssl_.get())) return false;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_.get());
  if (cipher == nullptr) return false;
  const auto id = SSL_CIPHER_get_protocol_id(cipher);
  const auto it = std::find_if(kSuites.begin(), kSuites.end(), [&](const Suite& s) { return s.id == id; });
  if (it == kSuites.end() || fetched().ciphers[static_cast<std::size_t>(it - kSuites.begin())] == nullptr) return false;
  if (read_.secret_len != it->hash_len || write_.secret_len != it->hash_len) return false;
  suite_ = static_cast<int>(it - kSuites.begin());
  if (!derive_key_iv(*it, read_) || !derive_key_iv(*it, write_)) return false;
  // Nothing was sent or received under the application keys yet (no tickets, no read-ahead).
  read_.seq = 0;
  write_.seq = 0;
  offloaded_ = true;
  ssl_.reset();
  return true;
}

bool TlsTransport::update_keys(Direction& d) {
  const Suite& suite = kSuites[static_cast<std::size_t>(suite_)];
  std::array<unsigned char, 48> next{};
  if (!hkdf_expand_label(suite, d.secret.data(), d.secret_len, "traffic upd", next.data(), d.secret_len)) return false;
  std::memcpy(d.secret.data(), next.data(), d.secret_len);
  OPENSSL_cleanse(next.data(), next.size());
  d.seq = 0;
  return derive_key_iv(suite, d);
}

bool TlsTransport::seal(Direction& d, unsigned char type, std::string_view plain, std::string& out) {
  const std::size_t len = plain.size() + 1 + kTag;
  const std::size_t at = out.size();
  out.resize(at + kHeader + len);
  auto* rec = reinterpret_cast<unsigned char*>(out.data() + at);
  rec[0] = kApplicationData;
  rec[1] = 0x03;
  rec[2] = 0x03;
  rec[3] = static_cast<unsigned char>(len >> 8);
  rec[4] = static_cast<unsigned char>(len & 0xff);
  unsigned char nonce[12];
  make_nonce(d, nonce);
  EVP_CIPHER_CTX* c = thread_cipher_ctx();
  int n = 0;
  const bool ok =
      EVP_EncryptInit_ex2(c, fetched().ciphers[static_cast<std::size_t>(suite_)], d.key.data(), nonce, nullptr) == 1 &&
      EVP_EncryptUpdate(c, nullptr, &n, rec, kHeader) == 1 &&
      EVP_EncryptUpdate(c, rec + kHeader, &n, reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) == 1 &&
      EVP_EncryptUpdate(c, rec + kHeader + plain.size(), &n, &type, 1) == 1 &&
      EVP_EncryptFinal_ex(c, rec + kHeader + plain.size() + 1, &n) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, kTag, rec + kHeader + plain.size() + 1) == 1;
  if (!ok) {
    out.resize(at);
    return false;
  }
  ++d.seq;
  return true;
}

IoResult TlsTransport::open_record(unsigned char* rec, std::size_t size, std::string& out) {
  if (rec[0] != kApplicationData) {
    return fail("unexpected TLS record type " + std::to_string(rec[0]) + " after the handshake");
  }
  const std::size_t len = size - kHeader;
  if (len < 1 + kTag) return fail("TLS record too short to be protected");
  const std::size_t body = len - kTag;
  unsigned char nonce[12];
  make_nonce(read_, nonce);
  unsigned char* inner = rec + kHeader;  // decrypted in place
  EVP_CIPHER_CTX* c = thread_cipher_ctx();
  int n = 0;
  const bool ok =
      EVP_DecryptInit_ex2(c, fetched().ciphers[static_cast<std::size_t>(suite_)], read_.key.data(), nonce, nullptr) == 1 &&
      EVP_DecryptUpdate(c, nullptr, &n, rec, kHeader) == 1 &&
      EVP_DecryptUpdate(c, inner, &n, inner, static_cast<int>(body)) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, kTag, inner + body) == 1 &&
      EVP_DecryptFinal_ex(c, inner + n, &n) == 1;
  if (!ok) return fail("TLS record failed authentication (bad_record_mac)");
  ++read_.seq;
  // The real content type is the last non-zero byte (§5.2).
  std::size_t end = body;
  while (end > 0 && inner[end - 1] == 0) --end;
  if (end == 0) return fail("TLS record without a content type");
  const auto type = inner[end - 1];
  const std::string_view content(reinterpret_cast<const char*>(inner), end - 1);
  if (content.size() > kMaxPlain) return fail("TLS record over 2^14 bytes of plaintext");
  switch (type) {
    case kApplicationData:
      out.append(content);
      return {IoStatus::ok, content.size()};
    case kAlert:
      if (content.size() == 2 && content[1] == 0) return {IoStatus::closed, 0};  // close_notify
      return fail("TLS alert " + std::to_string(content.size() == 2 ? static_cast<unsigned char>(content[1]) : 0) +
                  " from the peer");
    case kHandshake:
      return on_handshake_message(content);
    default:
      return fail("unexpected TLS content type " + std::to_string(type));
  }
}

// Post-handshake messages (§4.6): KeyUpdate is honoured (and answered when asked for);
// NewSessionTicket is ignored (we never resume); anything else ends the connection.
IoResult TlsTransport::on_handshake_message(std::string_view messages) {
  while (!messages.empty()) {
    if (messages.size() < 4) return fail("truncated TLS handshake message");
    const auto type = static_cast<unsigned char>(messages[0]);
    const std::size_t len = (static_cast<std::size_t>(static_cast<unsigned char>(messages[1])) << 16) |
                            (static_cast<std::size_t>(static_cast<unsigned char>(messages[2])) << 8) |
                            static_cast<unsigned char>(messages[3]);
    if (messages.size() < 4 + len) return fail("truncated TLS handshake message");
    const std::string_view body = messages.substr(4, len);
    messages.remove_prefix(4 + len);
    if (type == kNewSessionTicket && role_ == Role::client) continue;
    if (type != kKeyUpdate || body.size() != 1 || static_cast<unsigned char>(body[0]) > 1) {
      return fail("unsupported TLS post-handshake message " + std::to_string(type));
    }
    if (!update_keys(read_)) return fail("KeyUpdate: deriving the next read key failed");
    if (body[0] == 1) {
      // update_requested: answer with our own KeyUpdate(update_not_requested), then switch.
      const char answer[] = {static_cast<char>(kKeyUpdate), 0, 0, 1, 0};
      if (!seal(write_, kHandshake, std::string_view(answer, sizeof answer), pending_out_) || !update_keys(write_)) {
        return fail("KeyUpdate: answering failed");
      }
    }
  }
  return {IoStatus::ok, 0};
}

IoResult TlsTransport::read_openssl(std::string& out, std::size_t max) {
  if (!ssl_) return fail("TLS connection is not set up");
  const std::size_t start = out.size();
  out.resize(start + max);
  std::size_t n = 0;
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_read_ex(ssl_.get(), out.data() + start, max, &n);
  out.resize(start + (rc == 1 ? n : 0));
  if (rc == 1) return {IoStatus::ok, n};
  const int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ) return {IoStatus::want_read, 0};
  if (err == SSL_ERROR_WANT_WRITE) return {IoStatus::want_write, 0};
  if (err == SSL_ERROR_ZERO_RETURN) return {IoStatus::closed, 0};
  if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0) return {IoStatus::closed, 0};
  return fail(ssl_error_text(err));
}

IoResult TlsTransport::read(std::string& out, std::size_t max) {
  if (!offloaded_) return read_openssl(out, std::max<std::size_t>(max, 1));
  auto& buf = thread_buffer();
  std::size_t have = partial_.size();
  std::memcpy(buf.data(), partial_.data(), have);
  const std::size_t room = std::min(buf.size() - have, std::max(max, kHeader + kMaxCiphertext));
  const ssize_t got = ::recv(fd_, buf.data() + have, room, MSG_DONTWAIT);
  if (got == 0) return {IoStatus::closed, 0};
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {IoStatus::want_read, 0};
    if (errno == ECONNRESET || errno == EPIPE) return {IoStatus::closed, 0};
    return fail(std::string("read: ") + std::strerror(errno));
  }
  have += static_cast<std::size_t>(got);
  std::size_t pos = 0;
  std::size_t total = 0;
  IoResult result{IoStatus::ok, 0};
  while (have - pos >= kHeader) {
    unsigned char* h = buf.data() + pos;
    const std::size_t len = (static_cast<std::size_t>(h[3]) << 8) | h[4];
    if (len > kMaxCiphertext) return fail("TLS record of " + std::to_string(len) + " bytes (limit 2^14 + 256)");
    if (have - pos < kHeader + len) break;
    result = open_record(h, kHeader + len, out);
    pos += kHeader + len;
    if (result.status != IoStatus::ok) break;
    total += result.bytes;
  }
  partial_.assign(reinterpret_cast<const char*>(buf.data() + pos), have - pos);
  if (result.status == IoStatus::failed || result.status == IoStatus::closed) return result;
  if (!pending_out_.empty()) send_pending();  // a KeyUpdate answer
  return {IoStatus::ok, total};
}

IoResult TlsTransport::write_openssl(std::string_view plaintext) {
  if (!ssl_) return fail("TLS connection is not set up");
  // SSL_MODE_ENABLE_PARTIAL_WRITE: the unsent rest goes to pending_out_ as plaintext is not
  // possible with OpenSSL (it must be retried with the same bytes), so keep it as plaintext.
  pending_out_.append(plaintext);
  return flush();
}

IoResult TlsTransport::write(std::string_view plaintext) {
  if (!offloaded_) return write_openssl(plaintext);
  while (!plaintext.empty()) {
    if (write_.seq >= kKeyUpdateAfter) {
      const char update[] = {static_cast<char>(kKeyUpdate), 0, 0, 1, 0};
      if (!seal(write_, kHandshake, std::string_view(update, sizeof update), pending_out_) || !update_keys(write_)) {
        return fail("KeyUpdate failed");
      }
    }
    const std::string_view chunk = plaintext.substr(0, kMaxPlain);
    if (!seal(write_, kApplicationData, chunk, pending_out_)) return fail("protecting a TLS record failed");
    plaintext.remove_prefix(chunk.size());
  }
  return send_pending();
}

IoResult TlsTransport::send_pending() {
  while (!pending_out_.empty()) {
    const ssize_t n = ::send(fd_, pending_out_.data(), pending_out_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return {IoStatus::want_write, 0};
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) return {IoStatus::closed, 0};
      return fail(std::string("write: ") + std::strerror(errno));
    }
    pending_out_.erase(0, static_cast<std::size_t>(n));
  }
  return {IoStatus::ok, 0};
}

IoResult TlsTransport::flush() {
  if (offloaded_) return send_pending();
  if (!ssl_) return fail("TLS connection is not set up");
  while (!pending_out_.empty()) {
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int rc = SSL_write_ex(ssl_.get(), pending_out_.data(), pending_out_.size(), &n);
    if (rc == 1) {
      pending_out_.erase(0, n);
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), rc);
    if (err == SSL_ERROR_WANT_WRITE) return {IoStatus::want_write, 0};
    if (err == SSL_ERROR_WANT_READ) return {IoStatus::want_read, 0};
    if (err == SSL_ERROR_ZERO_RETURN) return {IoStatus::closed, 0};
    if (err == SSL_ERROR_SYSCALL && (errno == EPIPE || errno == ECONNRESET)) return {IoStatus::closed, 0};
    return fail(ssl_error_text(err));
  }
  return {IoStatus::ok, 0};
}

void TlsTransport::send_close_notify() {
  if (offloaded_) {
    const char alert[] = {1, 0};  // warning, close_notify
    if (seal(write_, kAlert, std::string_view(alert, sizeof alert), pending_out_)) send_pending();
    return;
  }
  if (ssl_ && SSL_is_init_finished(ssl_.get())) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
  }
}

void TlsTransport::release_buffers() {
  if (partial_.empty()) std::string().swap(partial_);
  if (pending_out_.empty()) std::string().swap(pending_out_);
}

}  // namespace cairn::control::server
