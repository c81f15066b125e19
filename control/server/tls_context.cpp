#include "control/server/tls_context.hpp"

#include <fstream>
#include <sstream>
#include <string>

#include "common/crypto.hpp"

namespace cairn::control::server {
namespace {

// TLS 1.2: forward secrecy and AEAD only (Mozilla server-side TLS, "intermediate", minus the
// DHE suites: no finite-field DH parameters to maintain). TLS 1.3 suites are OpenSSL's
// defaults, all AEAD.
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

}  // namespace

Result<SslCtxPtr> make_server_tls_context(const TlsSettings& s) {
  SslCtxPtr owned(SSL_CTX_new(TLS_server_method()));
  SSL_CTX* ctx = owned.get();
  if (ctx == nullptr) return fail(Errc::internal, "SSL_CTX_new: " + openssl_error());
  const int min = s.min_version == TlsMinVersion::tls1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx, min) != 1 || SSL_CTX_set_cipher_list(ctx, kTls12Ciphers) != 1) {
    return fail(Errc::internal, "TLS protocol settings: " + openssl_error());
  }
  // No renegotiation (TLS 1.2), no compression (CRIME), our suite order, no TLS 1.2 session
  // tickets. Kernel TLS where the kernel has the ULP: OpenSSL then falls back per connection
  // on its own when a suite or the kernel does not allow it.
  std::uint64_t options = SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
                          SSL_OP_NO_TICKET;
  if (s.kernel_tls) options |= SSL_OP_ENABLE_KTLS;
  SSL_CTX_set_options(ctx, options);
  // Idle connections (thousands of keep-alive agents) give their record buffers back
  // (man SSL_CTX_set_mode); a write may complete in parts, from a buffer that may move.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Nothing is resumable: no TLS 1.3 tickets, no server-side cache. A resumed TLS 1.2 session
  // would skip the client certificate and its expiry check; a reconnect is a full handshake.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

  if (SSL_CTX_use_certificate_chain_file(ctx, s.cert_file.c_str()) != 1) {
    return fail(Errc::config, "server certificate " + s.cert_file.string() + ": " + openssl_error(),
                "run 'cairn-control init --state DIR' or point --state at an initialised dir");
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, s.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return fail(Errc::config, "server key " + s.key_file.string() + ": " + openssl_error(),
                "the key must be the PEM private key of " + s.cert_file.string());
  }
  if (SSL_CTX_load_verify_locations(ctx, s.ca_file.c_str(), nullptr) != 1) {
    return fail(Errc::config, "cluster CA " + s.ca_file.string() + ": " + openssl_error(),
                "run 'cairn-control init --state DIR' first");
  }
  if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(s.ca_file.c_str())) {
    SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
  }
  // Request a client certificate but do not require one: /v1/enroll and /healthz work
  // without. Accept any chain here so a wrong certificate gets a JSON 401 instead of a bare
  // alert; SSL_get_verify_result() keeps the real verdict and the router refuses on it.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  static constexpr unsigned char kSessionContext[] = "cairn-control";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  return owned;
}

bool kernel_offers_tls_ulp(const Root& root) {
  std::ifstream in(root / "proc/sys/net/ipv4/tcp_available_ulp");
  std::string word;
  while (in >> word) {
    if (word == "tls") return true;
  }
  return false;
}

}  // namespace cairn::control::server
