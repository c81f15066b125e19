// The server's TLS configuration, in one place: which protocol versions and cipher suites
// cairn-control offers, how client certificates are requested, and what it keeps per
// connection. OpenSSL does all of TLS (handshake, records, X.509); this only configures it.
#pragma once

#include <filesystem>

#include "common/result.hpp"
#include "common/root.hpp"
#include "common/ssl.hpp"

namespace cairn::control::server {

enum class TlsMinVersion { tls1_2, tls1_3 };

struct TlsSettings {
  std::filesystem::path cert_file;  // server certificate + chain (PEM)
  std::filesystem::path key_file;
  std::filesystem::path ca_file;  // client certificates must chain to this
  TlsMinVersion min_version = TlsMinVersion::tls1_2;
  bool kernel_tls = false;  // SSL_OP_ENABLE_KTLS (see kernel_offers_tls_ulp)
};

// A server context: TLS 1.2 with ECDHE + AEAD suites only (Mozilla "intermediate" without
// DHE) or TLS 1.3 only; no session tickets, no session cache (nothing can be resumed, so
// every connection presents and verifies its certificate); client certificates requested,
// not required. Errors name the file that is wrong.
Result<SslCtxPtr> make_server_tls_context(const TlsSettings& settings);

// True when the kernel lists the "tls" upper-layer protocol in
// /proc/sys/net/ipv4/tcp_available_ulp (Documentation/networking/tls-offload.rst), i.e.
// OpenSSL can hand a connection's records to the kernel.
bool kernel_offers_tls_ulp(const Root& root);

}  // namespace cairn::control::server
