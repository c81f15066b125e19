// libcurl backend of HttpClient. The only file that includes curl.
#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <mutex>

#include "common/crypto.hpp"
#include "common/http.hpp"
#include "common/ssl.hpp"

namespace cairn {
namespace {

struct CurlDeleter {
  void operator()(CURL* c) const noexcept { curl_easy_cleanup(c); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
struct SlistDeleter {
  void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

constexpr std::size_t kMaxStreamErrorBody = 64 * 1024;

struct Sink {
  HttpResponse* response;
  std::size_t max_bytes;
  bool overflow = false;
  CURL* handle = nullptr;
  const std::function<bool(long, std::string_view)>* stream = nullptr;  // HttpRequest::body_sink
  std::size_t streamed = 0;
  bool stream_refused = false;
};

std::size_t on_body(char* data, std::size_t size, std::size_t nmemb, void* user) {
  auto* sink = static_cast<Sink*>(user);
  const std::size_t n = size * nmemb;
  if (sink->stream != nullptr && *sink->stream) {
    long status = 0;
    curl_easy_getinfo(sink->handle, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) {
      if (sink->streamed + n > sink->max_bytes) {
        sink->overflow = true;
        return 0;
      }
      sink->streamed += n;
      if (!(*sink->stream)(status, std::string_view(data, n))) {
        sink->stream_refused = true;
        return 0;
      }
      return n;
    }
    // An error answer during a streamed download is read for its message only.
    if (sink->response->body.size() + n > std::min<std::size_t>(sink->max_bytes, kMaxStreamErrorBody)) {
      sink->overflow = true;
      return 0;
    }
  }
  if (sink->response->body.size() + n > sink->max_bytes) {
    sink->overflow = true;
    return 0;  // aborts the transfer with CURLE_WRITE_ERROR
  }
  sink->response->body.append(data, n);
  return n;
}

std::size_t on_header(char* data, std::size_t size, std::size_t nmemb, void* user) {
  auto* sink = static_cast<Sink*>(user);
  const std::size_t n = size * nmemb;
  std::string_view line(data, n);
  if (line.starts_with("HTTP/")) {
    sink->response->headers.clear();  // a new response (after 100-continue or a redirect)
    return n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return n;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  auto value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
  sink->response->headers.emplace_back(std::move(name), std::string(value));
  return n;
}

// OpenSSL's verification of the server chain, with the one CA whose DER hashes to the
// pinned fingerprint as the only trust anchor. It must be in the chain the server sent.
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
  const int ok = X509_verify_cert(pinned.get());
  X509_STORE_CTX_set_error(ctx, ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(pinned.get()));
  return ok == 1 ? 1 : 0;
}

CURLcode install_ca_pin(CURL*, void* ssl_ctx, void* arg) {
  SSL_CTX_set_cert_verify_callback(static_cast<SSL_CTX*>(ssl_ctx), verify_against_pinned_ca, arg);
  return CURLE_OK;
}

Errc classify(CURLcode code) {
  switch (code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
      return Errc::refused;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return Errc::config;
    default:
      return Errc::unavailable;
  }
}

class CurlClient final : public HttpClient {
 public:
  explicit CurlClient(TlsOptions tls) : tls_(std::move(tls)) {
    global_init_once();
    handle_.reset(curl_easy_init());
  }

  Result<HttpResponse> send(const HttpRequest& req) override {
    if (!handle_) return fail(Errc::internal, "curl_easy_init failed");
    CURL* c = handle_.get();
    curl_easy_reset(c);  // keeps the connection cache, drops the previous request's options

    HttpResponse response;
    Sink sink{&response, req.max_response_bytes};
    sink.handle = c;
    sink.stream = &req.body_sink;
    char errbuf[CURL_ERROR_SIZE] = {};
    SlistPtr headers;
    for (const auto& [k, v] : req.headers) {
      headers.reset(curl_slist_append(headers.release(), (k + ": " + v).c_str()));
    }
    // An empty "Expect:" stops curl from waiting for 100-continue on larger bodies.
    headers.reset(curl_slist_append(headers.release(), "Expect:"));

    curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    if (req.method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (!req.body.empty() || req.method == "POST" || req.method == "PUT") {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &sink);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.connect_timeout.count()));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(req.total_timeout.count()));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (req.stall_timeout.count() > 0) {
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(req.stall_timeout.count()));
    }
    // The connect timeout covers name resolution, but on a timeout libcurl joins its
    // resolver thread, which waits out getaddrinfo (10 s and more with a dead resolver).
    // QUICK_EXIT (7.87) lets the thread finish on its own, so the timeouts above bound
    // the call, DNS included.
#if LIBCURL_VERSION_NUM >= 0x075700
    curl_easy_setopt(c, CURLOPT_QUICK_EXIT, 1L);
#endif
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, req.protocols.c_str());
    // A HEAD answer has no body: its Content-Length (an OCI blob's size) is not a download.
    if (req.method != "HEAD") {
      curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(req.max_response_bytes));
    }
    // Proxies from the environment must never see metadata or control traffic.
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
    if (!tls_.ca_file.empty() || !tls_.ca_fingerprint_sha256.empty()) {
      // Pinned: the bundle (or the fingerprint) alone. Debian's libcurl would otherwise also
      // trust its built-in CApath (/etc/ssl/certs), i.e. every public CA.
      // With a fingerprint the verify callback is the whole verification: no file at all
      // (a minimal system has no ca-certificates bundle for curl's default to point at).
      curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
      curl_easy_setopt(c, CURLOPT_CAINFO, tls_.ca_file.empty() ? nullptr : tls_.ca_file.c_str());
    }
    if (!tls_.ca_fingerprint_sha256.empty()) {
      curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, install_ca_pin);
      curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &tls_.ca_fingerprint_sha256);
    }
    if (!tls_.client_cert_file.empty()) {
      curl_easy_setopt(c, CURLOPT_SSLCERT, tls_.client_cert_file.c_str());
      curl_easy_setopt(c, CURLOPT_SSLKEY, tls_.client_key_file.c_str());
    }

    const CURLcode rc = curl_easy_perform(c);
    if (sink.stream_refused) {
      return fail(Errc::io, req.method + " " + req.url + ": the body could not be stored",
                  "check the destination's free space and permissions");
    }
    if (sink.overflow || rc == CURLE_FILESIZE_EXCEEDED) {
      return fail(Errc::data,
                  req.method + " " + req.url + ": response larger than " +
                      std::to_string(req.max_response_bytes) + " bytes",
                  "the server sent more than Cairn accepts; check the URL");
    }
    if (rc != CURLE_OK) {
      std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
      return fail(classify(rc), req.method + " " + req.url + ": " + detail,
                  rc == CURLE_OPERATION_TIMEDOUT ? "the server is slow or unreachable; retry later"
                                                 : "check that the service is up and the URL is right");
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return response;
  }

 private:
  TlsOptions tls_;
  CurlPtr handle_;
};

}  // namespace

std::optional<std::string> HttpResponse::header(std::string_view lower_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lower_name) return v;
  }
  return std::nullopt;
}

std::unique_ptr<HttpClient> make_http_client(TlsOptions tls) {
  return std::make_unique<CurlClient>(std::move(tls));
}

}  // namespace cairn
