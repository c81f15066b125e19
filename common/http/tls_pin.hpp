// The server verification both HTTP backends share (curl.cpp, lean.cpp): OpenSSL's own chain
// verification, with the one CA whose DER hashes to TlsOptions::ca_fingerprint_sha256 as the
// only trust anchor. That CA must be in the chain the server sent.
#pragma once

#include <openssl/ssl.h>

#include <string>

namespace cairn::http_detail {

// Makes `fingerprint` (hex SHA-256 of the CA's DER; must outlive ctx) the whole verification
// of ctx's peers. The host name is still checked by the caller's SSL_set1_host/ip setting.
void pin_ca_fingerprint(SSL_CTX* ctx, const std::string* fingerprint);

}  // namespace cairn::http_detail
