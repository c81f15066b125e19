// The TLS 1.3 record layer after OpenSSL's handshake. Protocol facts from RFC 8446:
//   §5.1/5.2 record = type(1)=23 | legacy_version(2)=0x0303 | length(2) | AEAD(inner), where
//            inner = content | real type(1) | zero padding, AAD = the 5-byte header,
//            length <= 2^14 + 256;
//   §5.3     nonce = iv XOR (64-bit sequence number, big-endian, left-padded);
//   §7.1     key/iv = HKDF-Expand-Label(traffic secret, "key"/"iv", "", length);
//   §7.2     KeyUpdate: next secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length);
//   §5.5     AES-GCM keys are good for 2^24.5 full records: we update ours well before;
//   §5.4     inner plaintext (content + type + padding) <= 2^14 + 1;
//   §4.6.3   KeyUpdate(update_requested) is answered once before our next application data,
//            however many requests came while we were silent;
//   §5.1     a KeyUpdate ends its record; no zero-length handshake or alert records;
//   §6.1     data after close_notify is ignored.
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
// Records in a row that carry no application data (empty records, KeyUpdates) before we give
// up: a peer could otherwise keep us decrypting and re-keying for nothing. OpenSSL uses 32 for
// both (MAX_EMPTY_RECORDS, MAX_KEY_UPDATE_MESSAGES).
constexpr unsigned kMaxEmptyRecords = 32;
// AlertDescription values, RFC 8446 §6.
constexpr unsigned char kAlertUnexpectedMessage = 10;
constexpr unsigned char kAlertBadRecordMac = 20;
constexpr unsigned char kAlertRecordOverflow = 22;
constexpr unsigned char kAlertIllegalParameter = 47;
constexpr unsigned char kAlertDecodeError = 50;
constexpr unsigned char kAlertUserCanceled = 90;
constexpr unsigned char kAlertInternalError = 80;

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

IoResult TlsTransport::fail(std::string message, unsigned char alert) {
  if (!broken_) error_ = std::move(message);  // the first error is the one that matters
  broken_ = true;
  if (offloaded_ && alert != 0 && !alert_sent_) {
    alert_sent_ = true;
    const char fatal[] = {2, static_cast<char>(alert)};  // level fatal (§6)
    key_update_owed_ = false;
    if (seal(write_, kAlert, std::string_view(fatal, sizeof fatal), pending_out_)) (void)send_pending();
  }
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
  if (!ssl_ || offloaded_ || broken_ || SSL_is_init_finished(ssl_.get()) != 1) return false;
  SSL* ssl = ssl_.get();
  // Our sequence numbers start at 0, so nothing may have been sent or received under the
  // application keys yet: no read-ahead (nothing read past the peer's Finished, and nothing
  // half-read), no session tickets written by the server (each would be a record under the
  // server's application key: starting at 0 again would reuse AEAD nonces), no 0-RTT.
  const bool quiet = SSL_version(ssl) == TLS1_3_VERSION && SSL_has_pending(ssl) == 0 &&
                     (role_ == Role::client || SSL_get_num_tickets(ssl) == 0) &&
                     SSL_get_early_data_status(ssl) != SSL_EARLY_DATA_ACCEPTED;
  const SSL_CIPHER* cipher = quiet ? SSL_get_current_cipher(ssl) : nullptr;
  const auto id = cipher != nullptr ? SSL_CIPHER_get_protocol_id(cipher) : 0;
  const auto it = std::find_if(kSuites.begin(), kSuites.end(), [&](const Suite& s) { return s.id == id; });
  const bool ok = it != kSuites.end() && fetched().ciphers[static_cast<std::size_t>(it - kSuites.begin())] != nullptr &&
                  read_.secret_len == it->hash_len && write_.secret_len == it->hash_len &&
                  derive_key_iv(*it, read_) && derive_key_iv(*it, write_);
  if (!ok) {
    // Staying on OpenSSL: the captured secrets are not needed.
    OPENSSL_cleanse(&read_, sizeof read_);
    OPENSSL_cleanse(&write_, sizeof write_);
    return false;
  }
  suite_ = static_cast<int>(it - kSuites.begin());
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

// KeyUpdate(update_not_requested) under the current write key, then the switch (§4.6.3).
bool TlsTransport::send_key_update() {
  const char update[] = {static_cast<char>(kKeyUpdate), 0, 0, 1, 0};
  if (!seal(write_, kHandshake, std::string_view(update, sizeof update), pending_out_) || !update_keys(write_)) {
    return false;
  }
  key_update_owed_ = false;
  return true;
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
  // A ChangeCipherSpec (20) is only allowed before the peer's Finished (§5), which OpenSSL read.
  if (rec[0] != kApplicationData) {
    return fail("unexpected TLS record type " + std::to_string(rec[0]) + " after the handshake",
                kAlertUnexpectedMessage);
  }
  const std::size_t len = size - kHeader;
  if (len < 1 + kTag) return fail("TLS record too short to be protected", kAlertDecodeError);
  const std::size_t body = len - kTag;
  if (body > kMaxPlain + 1) return fail("TLS record over 2^14 + 1 bytes of inner plaintext", kAlertRecordOverflow);
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
  if (!ok) return fail("TLS record failed authentication (bad_record_mac)", kAlertBadRecordMac);
  ++read_.seq;
  // The real content type is the last non-zero byte (§5.2).
  std::size_t end = body;
  while (end > 0 && inner[end - 1] == 0) --end;
  if (end == 0) return fail("TLS record without a content type", kAlertUnexpectedMessage);
  const auto type = inner[end - 1];
  const std::string_view content(reinterpret_cast<const char*>(inner), end - 1);
  if (type == kApplicationData && !content.empty()) {
    empty_records_ = 0;
    out.append(content);
    return {IoStatus::ok, content.size()};
  }
  if (++empty_records_ > kMaxEmptyRecords) {
    return fail("over " + std::to_string(kMaxEmptyRecords) + " TLS records in a row without data",
                kAlertUnexpectedMessage);
  }
  switch (type) {
    case kApplicationData:
      return {IoStatus::ok, 0};  // zero-length application data is allowed (§5.4)
    case kAlert:
      // One alert per record, never fragmented (§5.1); the level is implied by the type (§6).
      if (content.size() != 2) return fail("malformed TLS alert record", kAlertDecodeError);
      if (content[1] == 0) return {IoStatus::closed, 0};  // close_notify
      // user_canceled is the other closure alert (§6.1), followed by close_notify; OpenSSL
      // ignores it in TLS 1.3, so do we (counted above, so it cannot be used to spin us).
      if (content[1] == kAlertUserCanceled) return {IoStatus::ok, 0};
      return fail("TLS alert " + std::to_string(static_cast<unsigned char>(content[1])) + " from the peer");
    case kHandshake:
      return on_handshake_message(content);
    default:
      return fail("unexpected TLS content type " + std::to_string(type), kAlertUnexpectedMessage);
  }
}

// Post-handshake messages (§4.6): KeyUpdate is honoured (and answered when asked for);
// NewSessionTicket is ignored (we never resume); anything else ends the connection.
IoResult TlsTransport::on_handshake_message(std::string_view messages) {
  if (messages.empty()) return fail("zero-length TLS handshake record", kAlertUnexpectedMessage);
  while (!messages.empty()) {
    // Messages split over records are legal (§5.1) but no peer splits a 5-byte KeyUpdate.
    if (messages.size() < 4) return fail("truncated TLS handshake message", kAlertUnexpectedMessage);
    const auto type = static_cast<unsigned char>(messages[0]);
    const std::size_t len = (static_cast<std::size_t>(static_cast<unsigned char>(messages[1])) << 16) |
                            (static_cast<std::size_t>(static_cast<unsigned char>(messages[2])) << 8) |
                            static_cast<unsigned char>(messages[3]);
    if (messages.size() < 4 + len) return fail("truncated TLS handshake message", kAlertUnexpectedMessage);
    const std::string_view body = messages.substr(4, len);
    messages.remove_prefix(4 + len);
    if (type == kNewSessionTicket && role_ == Role::client) continue;
    if (type != kKeyUpdate) {
      return fail("unsupported TLS post-handshake message " + std::to_string(type), kAlertUnexpectedMessage);
    }
    if (body.size() != 1) return fail("malformed TLS KeyUpdate", kAlertDecodeError);
    if (static_cast<unsigned char>(body[0]) > 1) return fail("TLS KeyUpdate with an unknown request", kAlertIllegalParameter);
    // The read key changes after this message: it must end the record (§5.1).
    if (!messages.empty()) return fail("TLS KeyUpdate not at the end of its record", kAlertUnexpectedMessage);
    if (!update_keys(read_)) return fail("KeyUpdate: deriving the next read key failed", kAlertInternalError);
    // update_requested: answered once, before our next record (send_pending, write). A flag,
    // not a queue: a peer that asks again and again without reading costs no memory.
    if (body[0] == 1) key_update_owed_ = true;
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
  if (broken_) return {IoStatus::failed, 0};
  if (peer_closed_) return {IoStatus::closed, 0};
  auto& buf = thread_buffer();
  std::size_t have = partial_.size();
  // partial_ never holds a whole record (the loop below opens every complete one), so it is
  // shorter than kHeader + kMaxCiphertext and a full record always fits after it.
  if (have >= kHeader + kMaxCiphertext) return fail("internal: TLS read buffer overrun", kAlertInternalError);
  std::memcpy(buf.data(), partial_.data(), have);
  const std::size_t room = std::min(buf.size() - have, std::max(max, kHeader + kMaxCiphertext));
  const ssize_t got = ::recv(fd_, buf.data() + have, room, MSG_DONTWAIT);
  if (got == 0) return {IoStatus::closed, 0};
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return {IoStatus::want_read, 0};
    if (errno == ECONNRESET || errno == EPIPE) return {IoStatus::closed, 0};
    return fail(std::string("read: ") + std::strerror(errno));
  }
  have += static_cast<std::size_t>(got);
  std::size_t pos = 0;
  std::size_t total = 0;
  while (have - pos >= kHeader) {
    unsigned char* h = buf.data() + pos;
    const std::size_t len = (static_cast<std::size_t>(h[3]) << 8) | h[4];
    if (len > kMaxCiphertext) {
      partial_.clear();
      return fail("TLS record of " + std::to_string(len) + " bytes (limit 2^14 + 256)", kAlertRecordOverflow);
    }
    if (have - pos < kHeader + len) break;
    const IoResult r = open_record(h, kHeader + len, out);
    pos += kHeader + len;
    if (r.status == IoStatus::failed) {
      partial_.clear();
      return r;
    }
    if (r.status == IoStatus::closed) {
      peer_closed_ = true;  // what follows close_notify is ignored (§6.1)
      break;
    }
    total += r.bytes;
  }
  if (peer_closed_) {
    std::string().swap(partial_);
    // The data before close_notify is delivered first: a client may send its request and
    // close its write side at once, and still wait for the answer.
    return {total > 0 ? IoStatus::ok : IoStatus::closed, total};
  }
  partial_.assign(reinterpret_cast<const char*>(buf.data() + pos), have - pos);
  if (key_update_owed_ || !pending_out_.empty()) {
    // A KeyUpdate answer; a full socket only delays it (the next write sends it first).
    if (send_pending().status == IoStatus::failed) return {IoStatus::failed, 0};
  }
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
  if (broken_) return {IoStatus::failed, 0};
  while (!plaintext.empty()) {
    if ((key_update_owed_ || write_.seq >= kKeyUpdateAfter) && !send_key_update()) {
      return fail("KeyUpdate failed", kAlertInternalError);
    }
    const std::string_view chunk = plaintext.substr(0, kMaxPlain);
    if (!seal(write_, kApplicationData, chunk, pending_out_)) {
      return fail("protecting a TLS record failed", kAlertInternalError);
    }
    plaintext.remove_prefix(chunk.size());
  }
  return send_pending();
}

IoResult TlsTransport::send_pending() {
  for (;;) {
    if (pending_out_.empty()) {
      if (!key_update_owed_) break;
      if (!send_key_update()) return fail("KeyUpdate failed", kAlertInternalError);
    }
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
  if (offloaded_) return broken_ ? IoResult{IoStatus::failed, 0} : send_pending();
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
    if (broken_) return;
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
