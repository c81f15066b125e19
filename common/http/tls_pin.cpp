#include "common/http/tls_pin.hpp"

#include <openssl/x509.h>

#include "common/crypto.hpp"
#include "common/ssl.hpp"

namespace cairn::http_detail {
namespace {

int verify_against_pinned_ca(X509_STORE_CTX* ctx, void* arg) {
  const auto* fingerprint = static_cast<const std::string*>(arg);
  STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(ctx);
  X509* leaf = X509_STORE_CTX_get0_cert(ctx);
  X509* anchor = nullptr;
  for (int i = 0; sent != nullptr && i < sk_X509_num(sent); ++i) {
    X509* c = sk_X509_value(sent, i);
    if (equal_constant_time(cert_info(c).fingerprint_sha256, *fingerprint)) anchor = c;
  }
  if (anchor == nullptr) {
    X509_STORE_CTX_set_error(ctx, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    return 0;
  }
  X509StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), anchor);
  X509StoreCtxPtr pinned(X509_STORE_CTX_new());
  X509_STORE_CTX_init(pinned.get(), store.get(), leaf, sent);
  X509_STORE_CTX_set_default(pinned.get(), "ssl_server");
  // The host name (or IP) the caller set on the SSL object is part of its verify params:
  // carry them over, so the pinned chain is checked for the right name too.
  // The pinned CA must be a root of the chain: libcurl asks for partial chains by default,
  // which would let a pinned leaf or intermediate stand for the CA.
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(pinned.get());
  X509_VERIFY_PARAM_set1(param, X509_STORE_CTX_get0_param(ctx));
  X509_VERIFY_PARAM_clear_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  const int ok = X509_verify_cert(pinned.get());
  X509_STORE_CTX_set_error(ctx, ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(pinned.get()));
  return ok == 1 ? 1 : 0;
}

}  // namespace

void pin_ca_fingerprint(SSL_CTX* ctx, const std::string* fingerprint) {
  SSL_CTX_set_cert_verify_callback(ctx, verify_against_pinned_ca, const_cast<std::string*>(fingerprint));
}

}  // namespace cairn::http_detail
