// TlsTransport against a stock OpenSSL peer: the offloaded TLS 1.3 record layer must be
// indistinguishable from OpenSSL's own (data both ways, record splitting, KeyUpdate, alerts),
// refuse tampered records, and TLS 1.2 must stay on OpenSSL. Records OpenSSL would never send
// (zero-length, padded, odd alerts, misplaced KeyUpdates) come from Forger, an independent
// implementation of RFC 8446 §5.2 / §7.1 keyed with the client's traffic secret.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "control/server/tls_transport.hpp"

namespace {

using cairn::control::server::IoStatus;
using cairn::control::server::TlsTransport;
using namespace std::chrono_literals;

struct Pki {
  cairn::EvpPkey ca_key, server_key;
  cairn::X509Ptr ca, server;
  Pki() {
    const auto now = std::chrono::system_clock::now();
    ca_key = std::move(*cairn::generate_key(cairn::KeyType::p256));
    server_key = std::move(*cairn::generate_key(cairn::KeyType::p256));
    ca = std::move(*cairn::issue_certificate({.common_name = "test ca", .not_before = now - 1h,
                                              .not_after = now + 1h, .is_ca = true},
                                             ca_key.get(), nullptr, ca_key.get()));
    server = std::move(*cairn::issue_certificate({.common_name = "localhost", .not_before = now - 1h,
                                                  .not_after = now + 1h, .server_auth = true,
                                                  .dns_names = {"localhost"}},
                                                 server_key.get(), ca.get(), ca_key.get()));
  }
};

const Pki& pki() {
  static const Pki p;
  return p;
}

cairn::SslCtxPtr server_ctx() {
  cairn::SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  REQUIRE(SSL_CTX_use_certificate(ctx.get(), pki().server.get()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), pki().server_key.get()) == 1);
  cairn::control::server::prepare_tls_context(ctx.get());
  return ctx;
}

// The test client's CLIENT_TRAFFIC_SECRET_0 (hex), for Forger. Tests run on one thread.
std::string g_client_secret_hex;

cairn::SslCtxPtr client_ctx(int max_version = 0, const char* suites = nullptr) {
  cairn::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), pki().ca.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (max_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  if (suites != nullptr) REQUIRE(SSL_CTX_set_ciphersuites(ctx.get(), suites) == 1);
  SSL_CTX_set_keylog_callback(ctx.get(), [](const SSL*, const char* line) {
    const std::string text(line);
    const std::string label = "CLIENT_TRAFFIC_SECRET_0 ";
    if (text.rfind(label, 0) == 0) g_client_secret_hex = text.substr(text.rfind(' ') + 1);
  });
  return ctx;
}

// A stock OpenSSL client behind memory BIOs, so the test sees (and may alter) every byte.
struct Peer {
  cairn::SslPtr ssl;
  BIO* in = nullptr;   // bytes from the server
  BIO* out = nullptr;  // bytes to the server
  int fd;
  Peer(SSL_CTX* ctx, int socket) : ssl(SSL_new(ctx)), fd(socket) {
    in = BIO_new(BIO_s_mem());
    out = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl.get(), in, out);
    SSL_set_connect_state(ssl.get());
    SSL_set_tlsext_host_name(ssl.get(), "localhost");
  }
  // Moves bytes between the socket and the BIOs; `tamper` may change outgoing bytes.
  void pump(bool tamper = false) {
    char buf[65536];
    for (int n; (n = BIO_read(out, buf, sizeof buf)) > 0;) {
      if (tamper) buf[n - 1] ^= 0x01;
      REQUIRE(::send(fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) == n);
    }
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0;) BIO_write(in, buf, static_cast<int>(n));
  }
  void write(const std::string& data, bool tamper = false) {
    REQUIRE(SSL_write(ssl.get(), data.data(), static_cast<int>(data.size())) == static_cast<int>(data.size()));
    pump(tamper);
  }
  std::string read_all(std::size_t want) {
    std::string got;
    char buf[16384];
    for (int i = 0; i < 1000 && got.size() < want; ++i) {
      pump();
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
  }
};

struct Connection {
  cairn::SslCtxPtr sctx = server_ctx();
  cairn::SslCtxPtr cctx;
  cairn::UniqueFd server_fd, client_fd;
  std::unique_ptr<TlsTransport> server;
  std::unique_ptr<Peer> client;

  struct Options {
    int max_version = 0;
    const char* suites = nullptr;
    std::string first_flight;  // written by the client together with its Finished
    int tickets = 0;           // TLS 1.3 session tickets the server sends
  };
  explicit Connection(int client_max_version = 0)
      : Connection(Options{.max_version = client_max_version, .suites = nullptr, .first_flight = {}, .tickets = 0}) {}
  explicit Connection(const Options& options) : cctx(client_ctx(options.max_version, options.suites)) {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    server_fd = cairn::UniqueFd(sv[0]);
    client_fd = cairn::UniqueFd(sv[1]);
    SSL_CTX_set_num_tickets(sctx.get(), static_cast<std::size_t>(options.tickets));
    server = std::make_unique<TlsTransport>(server_fd.get(), sctx.get(), TlsTransport::Role::server);
    client = std::make_unique<Peer>(cctx.get(), client_fd.get());
    bool server_done = false, client_done = false;
    for (int i = 0; i < 100 && !(server_done && client_done); ++i) {
      if (!client_done) {
        client_done = SSL_do_handshake(client->ssl.get()) == 1;
        if (client_done && !options.first_flight.empty()) {
          // Into the same BIO as the Finished: one send() carries both.
          REQUIRE(SSL_write(client->ssl.get(), options.first_flight.data(),
                            static_cast<int>(options.first_flight.size())) ==
                  static_cast<int>(options.first_flight.size()));
        }
      }
      client->pump();
      if (!server_done) {
        const auto r = server->handshake();
        REQUIRE_MESSAGE(r.status != IoStatus::failed, server->error());
        server_done = r.status == IoStatus::ok;
      }
      client->pump();
    }
    REQUIRE(server_done);
    REQUIRE(client_done);
  }

  // Reads until `want` bytes of data arrived or something other than progress happens.
  std::pair<IoStatus, std::string> server_read(std::size_t want) {
    std::string got;
    for (int i = 0; i < 100 && got.size() < want; ++i) {
      client->pump();
      const auto r = server->read(got, 64 << 10);
      if (r.status == IoStatus::closed || r.status == IoStatus::failed) return {r.status, got};
    }
    return {IoStatus::ok, got};
  }
};

void send_raw(int fd, std::string_view bytes) {
  REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

// Protects client-to-server records from the client's application traffic secret, written
// from RFC 8446 (HKDF through EVP_PKEY, not the transport's code), starting at sequence 0: use
// it instead of the OpenSSL client's writes, never after them.
struct Forger {
  const char* cipher_name = nullptr;
  std::vector<unsigned char> key, iv;
  std::uint64_t seq = 0;

  explicit Forger(SSL* client) {
    const auto id = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(client));
    const char* digest = id == 0x1302 ? "SHA384" : "SHA256";
    cipher_name = id == 0x1301 ? "AES-128-GCM" : id == 0x1302 ? "AES-256-GCM" : "ChaCha20-Poly1305";
    long len = 0;
    unsigned char* raw = OPENSSL_hexstr2buf(g_client_secret_hex.c_str(), &len);
    REQUIRE(raw != nullptr);
    const std::vector<unsigned char> secret(raw, raw + len);
    OPENSSL_free(raw);
    key = expand_label(digest, secret, "key", id == 0x1301 ? 16 : 32);
    iv = expand_label(digest, secret, "iv", 12);
  }

  static std::vector<unsigned char> expand_label(const char* digest, const std::vector<unsigned char>& secret,
                                                 const std::string& label, std::size_t n) {
    const std::string full = "tls13 " + label;
    std::vector<unsigned char> info{static_cast<unsigned char>(n >> 8), static_cast<unsigned char>(n),
                                    static_cast<unsigned char>(full.size())};
    info.insert(info.end(), full.begin(), full.end());
    info.push_back(0);
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr),
                                                                    EVP_PKEY_CTX_free);
    std::vector<unsigned char> out(n);
    std::size_t out_len = n;
    REQUIRE(EVP_PKEY_derive_init(ctx.get()) == 1);
    REQUIRE(EVP_PKEY_CTX_set_hkdf_mode(ctx.get(), EVP_PKEY_HKDEF_MODE_EXPAND_ONLY) == 1);
    REQUIRE(EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_get_digestbyname(digest)) == 1);
    REQUIRE(EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), secret.data(), static_cast<int>(secret.size())) == 1);
    REQUIRE(EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), info.data(), static_cast<int>(info.size())) == 1);
    REQUIRE(EVP_PKEY_derive(ctx.get(), out.data(), &out_len) == 1);
    return out;
  }

  // One record: `content` of inner type `type`, then `padding` zero bytes (§5.2, §5.4).
  std::string record(unsigned char type, std::string_view content, std::size_t padding = 0) {
    std::string inner(content);
    inner.push_back(static_cast<char>(type));
    inner.append(padding, '\0');
    const std::size_t len = inner.size() + 16;
    std::string rec = {23, 3, 3, static_cast<char>(len >> 8), static_cast<char>(len & 0xff)};
    rec.resize(5 + len);
    unsigned char nonce[12];
    std::copy(iv.begin(), iv.end(), nonce);
    for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<unsigned char>(seq >> (8 * i));
    ++seq;
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> c(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
    auto* out = reinterpret_cast<unsigned char*>(rec.data());
    int n = 0;
    REQUIRE(EVP_EncryptInit_ex2(c.get(), EVP_get_cipherbyname(cipher_name), key.data(), nonce, nullptr) == 1);
    REQUIRE(EVP_EncryptUpdate(c.get(), nullptr, &n, out, 5) == 1);
    REQUIRE(EVP_EncryptUpdate(c.get(), out + 5, &n, reinterpret_cast<const unsigned char*>(inner.data()),
                              static_cast<int>(inner.size())) == 1);
    REQUIRE(EVP_EncryptFinal_ex(c.get(), out + 5 + inner.size(), &n) == 1);
    REQUIRE(EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + inner.size()) == 1);
    return rec;
  }
};

const std::string kKeyUpdateNotRequested{24, 0, 0, 1, 0};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 23);
  return s;
}

}  // namespace

TEST_CASE("an offloaded TLS 1.3 connection carries data both ways with a stock OpenSSL peer") {
  Connection c;
  REQUIRE(c.server->offload());
  CHECK(c.server->ssl() == nullptr);

  c.client->write("GET / HTTP/1.1\r\n\r\n");
  auto [status, got] = c.server_read(18);
  CHECK(status == IoStatus::ok);
  CHECK(got == "GET / HTTP/1.1\r\n\r\n");

  // Bigger than one record (2^14): split, and the peer reassembles it.
  const std::string big = pattern(40'000);
  REQUIRE(c.server->write(big).status == IoStatus::ok);
  CHECK(c.client->read_all(big.size()) == big);

  const std::string upload = pattern(70'000);
  c.client->write(upload);
  auto [status2, got2] = c.server_read(upload.size());
  CHECK(status2 == IoStatus::ok);
  CHECK(got2 == upload);
}

TEST_CASE("a KeyUpdate from the peer is honoured and, when requested, answered") {
  Connection c;
  REQUIRE(c.server->offload());
  for (int round = 0; round < 3; ++round) {
    REQUIRE(SSL_key_update(c.client->ssl.get(), SSL_KEY_UPDATE_REQUESTED) == 1);
    c.client->write("after update " + std::to_string(round));
    auto [status, got] = c.server_read(14);
    CHECK(status == IoStatus::ok);
    CHECK(got == "after update " + std::to_string(round));
    // Our answer switched our keys too: the peer must read this under the new ones.
    REQUIRE(c.server->write("reply " + std::to_string(round)).status == IoStatus::ok);
    CHECK(c.client->read_all(7) == "reply " + std::to_string(round));
  }
}

TEST_CASE("a tampered record fails authentication and delivers nothing") {
  Connection c;
  REQUIRE(c.server->offload());
  c.client->write("secret request", /*tamper=*/true);
  auto [status, got] = c.server_read(14);
  CHECK(status == IoStatus::failed);
  CHECK(got.empty());
  CHECK(c.server->error().find("bad_record_mac") != std::string::npos);
  // The peer is told why (RFC 8446 §5.2: bad_record_mac), and the transport stays failed.
  c.client->pump();
  char buf[16];
  ERR_clear_error();
  CHECK(SSL_read(c.client->ssl.get(), buf, sizeof buf) <= 0);
  CHECK(ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_SSLV3_ALERT_BAD_RECORD_MAC);
  std::string more;
  CHECK(c.server->read(more, 1024).status == IoStatus::failed);
  CHECK(c.server->write("x").status == IoStatus::failed);
}

TEST_CASE("close_notify reads as closed, both ways") {
  Connection c;
  REQUIRE(c.server->offload());
  c.server->send_close_notify();
  c.client->pump();
  char buf[16];
  CHECK(SSL_read(c.client->ssl.get(), buf, sizeof buf) <= 0);
  CHECK(SSL_get_error(c.client->ssl.get(), 0) == SSL_ERROR_ZERO_RETURN);

  Connection d;
  REQUIRE(d.server->offload());
  REQUIRE(SSL_shutdown(d.client->ssl.get()) >= 0);
  d.client->pump();
  CHECK(d.server_read(1).first == IoStatus::closed);
}

TEST_CASE("a TLS 1.2 peer stays on OpenSSL's record layer and works the same") {
  Connection c(TLS1_2_VERSION);
  CHECK_FALSE(c.server->offload());
  REQUIRE(c.server->ssl() != nullptr);
  c.client->write("hello over 1.2");
  auto [status, got] = c.server_read(14);
  CHECK(status == IoStatus::ok);
  CHECK(got == "hello over 1.2");
  const std::string big = pattern(40'000);
  REQUIRE(c.server->write(big).status == IoStatus::ok);
  CHECK(c.client->read_all(big.size()) == big);
}

TEST_CASE("a record longer than TLS allows is refused before it is buffered") {
  Connection c;
  REQUIRE(c.server->offload());
  const unsigned char header[] = {23, 3, 3, 0xff, 0xff};  // 65535 > 2^14 + 256
  REQUIRE(::send(c.client_fd.get(), header, sizeof header, MSG_NOSIGNAL) == 5);
  std::string got;
  const auto r = c.server->read(got, 1024);
  CHECK(r.status == IoStatus::failed);
  CHECK(c.server->error().find("limit") != std::string::npos);
}

TEST_CASE("every offloaded cipher suite interoperates with OpenSSL, KeyUpdate included") {
  for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
    CAPTURE(suite);
    Connection c(Connection::Options{.max_version = 0, .suites = suite, .first_flight = {}, .tickets = 0});
    REQUIRE(c.server->offload());
    CHECK(std::string(SSL_CIPHER_standard_name(SSL_get_current_cipher(c.client->ssl.get()))) == suite);
    c.client->write("ping");
    CHECK(c.server_read(4).second == "ping");
    REQUIRE(c.server->write(pattern(20'000)).status == IoStatus::ok);
    CHECK(c.client->read_all(20'000) == pattern(20'000));
    REQUIRE(SSL_key_update(c.client->ssl.get(), SSL_KEY_UPDATE_REQUESTED) == 1);
    c.client->write("after");
    CHECK(c.server_read(5).second == "after");
    REQUIRE(c.server->write("pong").status == IoStatus::ok);
    CHECK(c.client->read_all(4) == "pong");
  }
}

TEST_CASE("a request sent in the same flight as the client's Finished is read after offload") {
  const std::string request = "GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n";
  Connection c(Connection::Options{.max_version = 0, .suites = nullptr, .first_flight = request, .tickets = 0});
  // No read-ahead: OpenSSL stopped at the Finished, the request is still in the socket.
  REQUIRE(c.server->offload());
  auto [status, got] = c.server_read(request.size());
  CHECK(status == IoStatus::ok);
  CHECK(got == request);
  REQUIRE(c.server->write("HTTP/1.1 204 No Content\r\n\r\n").status == IoStatus::ok);
  CHECK(c.client->read_all(27) == "HTTP/1.1 204 No Content\r\n\r\n");
}

TEST_CASE("many small records arriving in one read are all delivered by that read") {
  Connection c;
  REQUIRE(c.server->offload());
  std::string sent;
  for (int i = 0; i < 300; ++i) {
    const std::string piece = "r" + std::to_string(1000 + i);
    REQUIRE(SSL_write(c.client->ssl.get(), piece.data(), static_cast<int>(piece.size())) == 5);
    sent += piece;
  }
  c.client->pump();
  std::string got;
  const auto r = c.server->read(got, 16 << 10);
  CHECK(r.status == IoStatus::ok);
  CHECK(r.bytes == sent.size());
  CHECK(got == sent);
}

TEST_CASE("records split across reads byte by byte are reassembled") {
  Connection c;
  REQUIRE(c.server->offload());
  REQUIRE(SSL_write(c.client->ssl.get(), "first record", 12) == 12);
  const std::string big = pattern(20'000);  // two records, one of them full size
  REQUIRE(SSL_write(c.client->ssl.get(), big.data(), static_cast<int>(big.size())) == 20'000);
  std::string wire(64 << 10, '\0');
  const int n = BIO_read(c.client->out, wire.data(), static_cast<int>(wire.size()));
  REQUIRE(n > 0);
  wire.resize(static_cast<std::size_t>(n));
  std::string got;
  for (const char byte : wire) {
    send_raw(c.client_fd.get(), std::string_view(&byte, 1));
    const auto r = c.server->read(got, 16 << 10);
    REQUIRE_MESSAGE(r.status == IoStatus::ok, c.server->error());
  }
  CHECK(got == "first record" + big);
  std::string none;
  CHECK(c.server->read(none, 1024).status == IoStatus::want_read);
}

TEST_CASE("zero-length and padded application data records are accepted") {
  Connection c;
  REQUIRE(c.server->offload());
  Forger f(c.client->ssl.get());
  std::string wire = f.record(23, "");  // one statement each: records are numbered in order
  wire += f.record(23, "padded", 200);
  wire += f.record(23, "");
  wire += f.record(23, std::string(1 << 14, 'x'));  // the largest content allowed
  send_raw(c.client_fd.get(), wire);
  auto [status, got] = c.server_read(6 + (1 << 14));
  CHECK(status == IoStatus::ok);
  CHECK(got == "padded" + std::string(1 << 14, 'x'));
}

TEST_CASE("a record with inner plaintext over 2^14 + 1 bytes is refused (record_overflow)") {
  Connection c;
  REQUIRE(c.server->offload());
  Forger f(c.client->ssl.get());
  send_raw(c.client_fd.get(), f.record(23, std::string(1 << 14, 'x'), 1));
  auto [status, got] = c.server_read(1);
  CHECK(status == IoStatus::failed);
  CHECK(got.empty());
  CHECK(c.server->error().find("2^14 + 1") != std::string::npos);
}

TEST_CASE("an alert other than close_notify fails the connection and names the alert") {
  for (const unsigned char description : {40, 80, 200}) {  // handshake_failure, internal_error, unknown
    CAPTURE(static_cast<int>(description));
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    send_raw(c.client_fd.get(), f.record(21, std::string{2, static_cast<char>(description)}));
    CHECK(c.server_read(1).first == IoStatus::failed);
    CHECK(c.server->error() == "TLS alert " + std::to_string(description) + " from the peer");
  }
  {
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    send_raw(c.client_fd.get(), f.record(21, std::string{1, 0, 1, 0}));  // two alerts in one record
    CHECK(c.server_read(1).first == IoStatus::failed);
    CHECK(c.server->error().find("malformed TLS alert") != std::string::npos);
  }
  {
    // user_canceled is a closure alert, ignored like OpenSSL does in TLS 1.3.
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    std::string wire = f.record(21, std::string{1, 90});
    wire += f.record(23, "still here");
    send_raw(c.client_fd.get(), wire);
    CHECK(c.server_read(10).second == "still here");
  }
}

TEST_CASE("data before close_notify is delivered and what follows it is ignored") {
  Connection c;
  REQUIRE(c.server->offload());
  Forger f(c.client->ssl.get());
  std::string wire = f.record(23, "GET / HTTP/1.1\r\n\r\n");
  wire += f.record(21, std::string{1, 0});
  wire += f.record(23, "after close");
  send_raw(c.client_fd.get(), wire);
  std::string got;
  const auto r = c.server->read(got, 16 << 10);
  CHECK_MESSAGE(r.status == IoStatus::ok, c.server->error());
  CHECK(got == "GET / HTTP/1.1\r\n\r\n");
  CHECK(c.server->peer_closed());
  CHECK(c.server->read(got, 16 << 10).status == IoStatus::closed);
  CHECK(got == "GET / HTTP/1.1\r\n\r\n");
  // The answer still goes out (the client only closed its write side).
  REQUIRE(c.server->write("HTTP/1.1 200 OK\r\n\r\n").status == IoStatus::ok);
  CHECK(c.client->read_all(19) == "HTTP/1.1 200 OK\r\n\r\n");
}

TEST_CASE("a KeyUpdate that does not end its record, or an empty handshake record, is refused") {
  {
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    send_raw(c.client_fd.get(), f.record(22, kKeyUpdateNotRequested + kKeyUpdateNotRequested));
    CHECK(c.server_read(1).first == IoStatus::failed);
    CHECK(c.server->error().find("end of its record") != std::string::npos);
  }
  {
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    send_raw(c.client_fd.get(), f.record(22, ""));
    CHECK(c.server_read(1).first == IoStatus::failed);
    CHECK(c.server->error().find("zero-length") != std::string::npos);
  }
  {
    Connection c;
    REQUIRE(c.server->offload());
    Forger f(c.client->ssl.get());
    send_raw(c.client_fd.get(), f.record(22, std::string{24, 0, 0, 1, 2}));  // request_update 2
    CHECK(c.server_read(1).first == IoStatus::failed);
    CHECK(c.server->error().find("unknown request") != std::string::npos);
  }
}

TEST_CASE("a peer sending only records without data is cut off after 32 in a row") {
  Connection c;
  REQUIRE(c.server->offload());
  Forger f(c.client->ssl.get());
  std::string wire;
  for (int i = 0; i < 32; ++i) wire += f.record(23, "");
  wire += f.record(23, "x");  // resets the count
  for (int i = 0; i < 33; ++i) wire += f.record(23, "");
  send_raw(c.client_fd.get(), wire);
  auto [status, got] = c.server_read(2);
  CHECK(status == IoStatus::failed);
  CHECK(got == "x");
  CHECK(c.server->error().find("without data") != std::string::npos);
}

TEST_CASE("a ChangeCipherSpec record after the handshake is an unexpected record") {
  Connection c;
  REQUIRE(c.server->offload());
  send_raw(c.client_fd.get(), std::string{20, 3, 3, 0, 1, 1});
  CHECK(c.server_read(1).first == IoStatus::failed);
  CHECK(c.server->error().find("record type 20") != std::string::npos);
}

TEST_CASE("KeyUpdate requests read together are answered by a single KeyUpdate") {
  Connection c;
  REQUIRE(c.server->offload());
  int key_updates_seen = 0;
  SSL_set_msg_callback_arg(c.client->ssl.get(), &key_updates_seen);
  SSL_set_msg_callback(c.client->ssl.get(), [](int write_p, int, int content_type, const void* buf, std::size_t len,
                                               SSL*, void* arg) {
    if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        static_cast<const unsigned char*>(buf)[0] == SSL3_MT_KEY_UPDATE) {
      ++*static_cast<int*>(arg);
    }
  });
  for (int i = 0; i < 10; ++i) {
    REQUIRE(SSL_key_update(c.client->ssl.get(), SSL_KEY_UPDATE_REQUESTED) == 1);
    REQUIRE(SSL_do_handshake(c.client->ssl.get()) == 1);
  }
  c.client->write("after ten");
  CHECK(c.server_read(9).second == "after ten");
  REQUIRE(c.server->write("reply").status == IoStatus::ok);
  CHECK(c.client->read_all(5) == "reply");
  CHECK(key_updates_seen == 1);
}

TEST_CASE("a TLS 1.3 server that sent session tickets is not offloaded (its sequence number moved)") {
  Connection c(Connection::Options{.max_version = 0, .suites = nullptr, .first_flight = {}, .tickets = 2});
  // Restarting the write sequence at 0 would reuse AEAD nonces of the ticket records.
  CHECK_FALSE(c.server->offload());
  REQUIRE(c.server->ssl() != nullptr);
  c.client->write("still works");
  CHECK(c.server_read(11).second == "still works");
  REQUIRE(c.server->write("yes").status == IoStatus::ok);
  CHECK(c.client->read_all(3) == "yes");
}
