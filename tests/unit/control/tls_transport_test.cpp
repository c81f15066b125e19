// TlsTransport against a stock OpenSSL peer: the offloaded TLS 1.3 record layer must be
// indistinguishable from OpenSSL's own (data both ways, record splitting, KeyUpdate, alerts),
// refuse tampered records, and TLS 1.2 must stay on OpenSSL.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

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

cairn::SslCtxPtr client_ctx(int max_version = 0) {
  cairn::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), pki().ca.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (max_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
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

  explicit Connection(int client_max_version = 0) : cctx(client_ctx(client_max_version)) {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    server_fd = cairn::UniqueFd(sv[0]);
    client_fd = cairn::UniqueFd(sv[1]);
    server = std::make_unique<TlsTransport>(server_fd.get(), sctx.get(), TlsTransport::Role::server);
    client = std::make_unique<Peer>(cctx.get(), client_fd.get());
    bool server_done = false, client_done = false;
    for (int i = 0; i < 100 && !(server_done && client_done); ++i) {
      if (!client_done) client_done = SSL_do_handshake(client->ssl.get()) == 1;
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
