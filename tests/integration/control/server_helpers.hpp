// What the integration tests of the HTTPS server share: clients that send exactly what a
// test needs (libcurl for the well-behaved, raw OpenSSL for the rest), node enrollment
// through the real CLI and /v1/enroll, and readers for the answers and /metrics.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/ssl.hpp"
#include "common/uuid.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"

namespace cairn::test {


using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

inline Result<HttpResponse> send(const TlsOptions& tls, std::string method, std::string url, std::string body = {},
                          HttpHeaders headers = {}) {
  auto client = make_http_client(tls);
  HttpRequest request;
  request.method = std::move(method);
  request.url = std::move(url);
  request.body = std::move(body);
  request.headers = std::move(headers);
  request.total_timeout = 15s;
  return client->send(request);
}

inline std::string error_code_of(const HttpResponse& response) {
  auto e = protocol::decode_error_body(response.body);
  return e ? e->code : "(no error body: " + response.body + ")";
}

// Writes key and cert PEMs for a client certificate; returns TLS options that present it.
struct ClientCredential {
  std::filesystem::path cert;
  std::filesystem::path key;
};

inline ClientCredential write_credential(const std::filesystem::path& dir, std::string_view name, const X509* cert,
                                  const EVP_PKEY* key) {
  ClientCredential c{dir / (std::string(name) + ".crt"), dir / (std::string(name) + ".key")};
  REQUIRE(write_file_atomic(c.cert, *cert_pem(cert)));
  REQUIRE(write_file_atomic(c.key, *private_key_pem(key), 0600));
  return c;
}

// A CA that is not the cluster's, with one client certificate for `cn`.
struct ForeignPki {
  std::filesystem::path ca;
  ClientCredential client;
};
inline ForeignPki make_foreign_pki(const std::filesystem::path& dir, const std::string& cn) {
  const auto now = std::chrono::system_clock::now();
  auto ca_key = generate_key(KeyType::ed25519);
  REQUIRE(ca_key);
  CertSpec ca_spec;
  ca_spec.common_name = "someone else's CA";
  ca_spec.not_before = now - 1h;
  ca_spec.not_after = now + 24h;
  ca_spec.is_ca = true;
  auto ca = issue_certificate(ca_spec, ca_key->get(), nullptr, ca_key->get());
  REQUIRE(ca);
  auto leaf_key = generate_key(KeyType::ed25519);
  REQUIRE(leaf_key);
  CertSpec leaf_spec;
  leaf_spec.common_name = cn;
  leaf_spec.not_before = now - 1h;
  leaf_spec.not_after = now + 24h;
  leaf_spec.client_auth = true;
  leaf_spec.server_auth = true;
  leaf_spec.ip_addresses = {"127.0.0.1"};
  auto leaf = issue_certificate(leaf_spec, leaf_key->get(), ca->get(), ca_key->get());
  REQUIRE(leaf);
  ForeignPki pki;
  pki.ca = dir / "foreign-ca.crt";
  REQUIRE(write_file_atomic(pki.ca, *cert_pem(ca->get())));
  pki.client = write_credential(dir, "foreign-client", leaf->get(), leaf_key->get());
  return pki;
}

// Enrolls a fresh node (a new id and key) with the enrollment token `secret`; returns its node
// id and credential.
struct EnrolledNode {
  std::string id;
  ClientCredential credential;
};
inline EnrolledNode enroll_node_with_token(const ControlServer& server, const std::string& secret) {
  EnrolledNode node;
  node.id = random_uuid().str();
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key);
  protocol::EnrollRequest request;
  request.identity.node_id = node.id;
  request.identity.source = "local";
  request.identity.hostname = "test-node";
  request.csr_pem = *make_csr_pem(key->get(), node.id);
  auto response = send(server.anonymous(), "POST", server.url("/v1/enroll"), protocol::to_json(request).dump(),
                       {{"Authorization", "Bearer " + secret}, {"Content-Type", "application/json"}});
  REQUIRE_MESSAGE(response.has_value(), (response ? "" : response.error().message));
  REQUIRE_MESSAGE(response->status == 200, response->body);
  auto cert = protocol::decode_certificate_response(response->body);
  REQUIRE(cert);
  node.credential = {server.scratch() / (node.id + ".crt"), server.scratch() / (node.id + ".key")};
  REQUIRE(write_file_atomic(node.credential.cert, cert->certificate_pem));
  REQUIRE(write_file_atomic(node.credential.key, *private_key_pem(key->get()), 0600));
  return node;
}

// Enrolls a fresh node with a token of its own from the real CLI.
inline EnrolledNode enroll_node(const ControlServer& server) {
  const auto token = server.cli({"token", "create"});
  REQUIRE_MESSAGE(token.exit_code == 0, token.err);
  return enroll_node_with_token(server, trim_output(token.out));
}

inline TlsOptions as_node(const ControlServer& server, const EnrolledNode& node) {
  return tls_with((server.state() / "ca.crt").string(), node.credential.cert.string(),
                  node.credential.key.string());
}

inline std::string heartbeat_body() {
  protocol::HeartbeatRequest hb;
  hb.boot_id = random_uuid().str();
  hb.agent_version = "test";
  hb.mount_state = "none";
  hb.cpu_count = 2;
  return protocol::to_json(hb).dump();
}

inline UniqueFd connect_tcp(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd.valid());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

// A raw OpenSSL client, so a test picks the TLS version and exactly what goes on the wire:
// sends `bytes` in one write, then reads until `responses` whole HTTP answers arrived.
struct RawExchange {
  std::string version;           // negotiated TLS version
  std::vector<std::string> answers;
};
inline RawExchange raw_exchange(const ControlServer& server, const EnrolledNode& node, int max_version,
                         const std::string& bytes, std::size_t responses) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(ctx);
  if (max_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  REQUIRE(SSL_CTX_load_verify_locations(ctx.get(), (server.state() / "ca.crt").c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  REQUIRE(SSL_CTX_use_certificate_file(ctx.get(), node.credential.cert.c_str(), SSL_FILETYPE_PEM) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey_file(ctx.get(), node.credential.key.c_str(), SSL_FILETYPE_PEM) == 1);
  UniqueFd fd = connect_tcp(server.port());
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  SslPtr ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd.get());
  REQUIRE(SSL_connect(ssl.get()) == 1);
  RawExchange out;
  out.version = SSL_get_version(ssl.get());
  REQUIRE(SSL_write(ssl.get(), bytes.data(), static_cast<int>(bytes.size())) == static_cast<int>(bytes.size()));
  std::string buffer;
  char chunk[16384];
  while (out.answers.size() < responses) {
    const int n = SSL_read(ssl.get(), chunk, sizeof chunk);
    if (n <= 0) break;
    buffer.append(chunk, static_cast<std::size_t>(n));
    for (;;) {  // split off every whole answer (headers + Content-Length body)
      const auto end = buffer.find("\r\n\r\n");
      if (end == std::string::npos) break;
      const auto cl = buffer.find("Content-Length: ");
      REQUIRE(cl != std::string::npos);
      const auto length = std::stoul(buffer.substr(cl + 16));
      if (buffer.size() < end + 4 + length) break;
      out.answers.push_back(buffer.substr(0, end + 4 + length));
      buffer.erase(0, end + 4 + length);
    }
  }
  return out;
}

inline std::string heartbeat_request(const ControlServer& server) {
  const std::string body = heartbeat_body();
  return "POST /v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(server.port()) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// True once the peer has closed the connection (EOF or reset); false if still open after `timeout`.
inline bool closed_within(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0) return false;
    if (n == 0) return false;
    char buf[4096];
    const ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
  }
}

inline std::optional<double> metric_value(const std::string& text, const std::string& series) {
  const auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos) return std::nullopt;
  return std::stod(text.substr(pos + series.size() + 2));
}

}  // namespace cairn::test
