// libcurl backend of HttpClient. The only file that includes curl. libcurl is dlopen()ed on
// the first request (common/dynamic_library.hpp), not linked: Debian's libcurl brings some
// twenty libraries (gnutls, krb5, ldap, ssh2, rtmp, ...), which the agent's service loop,
// talking to control through lean.cpp, then never maps unless it downloads a module.
#include <curl/curl.h>

#include <algorithm>
#include <cctype>

#include "common/dynamic_library.hpp"
#include "common/http.hpp"
#include "common/http/tls_pin.hpp"

namespace cairn {
namespace {

constexpr const char* kLibCurl = "libcurl.so.4";

// The libcurl functions this file calls, resolved once. (Through these pointers
// curl_easy_setopt and curl_easy_getinfo are plain variadic calls, without the type-checking
// macros of curl/typecheck-gcc.h: every option below passes the type curl.easy_setopt(3) names.)
struct CurlApi {
  decltype(&::curl_global_init) global_init = nullptr;
  decltype(&::curl_easy_init) easy_init = nullptr;
  decltype(&::curl_easy_cleanup) easy_cleanup = nullptr;
  decltype(&::curl_easy_reset) easy_reset = nullptr;
  decltype(&::curl_easy_setopt) easy_setopt = nullptr;
  decltype(&::curl_easy_perform) easy_perform = nullptr;
  decltype(&::curl_easy_getinfo) easy_getinfo = nullptr;
  decltype(&::curl_easy_strerror) easy_strerror = nullptr;
  decltype(&::curl_slist_append) slist_append = nullptr;
  decltype(&::curl_slist_free_all) slist_free_all = nullptr;
};

Result<CurlApi> load_curl() {
  auto lib = DynamicLibrary::open(kLibCurl, "HTTP downloads (module registry) and cloud metadata",
                                  "install libcurl4 on the node");
  if (!lib) return fail(lib.error());
  CurlApi api;
  MissingSymbols missing;
  lib->bind(api.global_init, "curl_global_init", missing);
  lib->bind(api.easy_init, "curl_easy_init", missing);
  lib->bind(api.easy_cleanup, "curl_easy_cleanup", missing);
  lib->bind(api.easy_reset, "curl_easy_reset", missing);
  lib->bind(api.easy_setopt, "curl_easy_setopt", missing);
  lib->bind(api.easy_perform, "curl_easy_perform", missing);
  lib->bind(api.easy_getinfo, "curl_easy_getinfo", missing);
  lib->bind(api.easy_strerror, "curl_easy_strerror", missing);
  lib->bind(api.slist_append, "curl_slist_append", missing);
  lib->bind(api.slist_free_all, "curl_slist_free_all", missing);
  if (auto ok = missing.check(kLibCurl, "install libcurl4 7.88 or later"); !ok) return fail(ok.error());
  api.global_init(CURL_GLOBAL_DEFAULT);
  return api;
}

// Loaded and initialised once per process (curl_global_init is not thread-safe: the static's
// initialisation is).
Result<const CurlApi*> curl_api() {
  static const Result<CurlApi> loaded = load_curl();
  if (!loaded) return fail(loaded.error());
  return &*loaded;
}

using CurlPtr = std::unique_ptr<CURL, decltype(&::curl_easy_cleanup)>;
using SlistPtr = std::unique_ptr<curl_slist, decltype(&::curl_slist_free_all)>;

constexpr std::size_t kMaxStreamErrorBody = 64 * 1024;

struct Sink {
  const CurlApi* api;
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
    sink->api->easy_getinfo(sink->handle, CURLINFO_RESPONSE_CODE, &status);
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

CURLcode install_ca_pin(CURL*, void* ssl_ctx, void* arg) {
  http_detail::pin_ca_fingerprint(static_cast<SSL_CTX*>(ssl_ctx), static_cast<const std::string*>(arg));
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
  explicit CurlClient(TlsOptions tls) : tls_(std::move(tls)) {}

  Result<HttpResponse> send(const HttpRequest& req) override {
    auto loaded = curl_api();
    if (!loaded) return fail(loaded.error().with_context(req.method + " " + req.url));
    const CurlApi& curl = **loaded;
    if (!handle_) handle_ = CurlPtr(curl.easy_init(), curl.easy_cleanup);
    if (!handle_) return fail(Errc::internal, "curl_easy_init failed");
    CURL* c = handle_.get();
    curl.easy_reset(c);  // keeps the connection cache, drops the previous request's options

    HttpResponse response;
    Sink sink{&curl, &response, req.max_response_bytes};
    sink.handle = c;
    sink.stream = &req.body_sink;
    char errbuf[CURL_ERROR_SIZE] = {};
    SlistPtr headers(nullptr, curl.slist_free_all);
    for (const auto& [k, v] : req.headers) {
      headers.reset(curl.slist_append(headers.release(), (k + ": " + v).c_str()));
    }
    // An empty "Expect:" stops curl from waiting for 100-continue on larger bodies.
    headers.reset(curl.slist_append(headers.release(), "Expect:"));

    curl.easy_setopt(c, CURLOPT_URL, req.url.c_str());
    curl.easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    if (req.method == "HEAD") curl.easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (!req.body.empty() || req.method == "POST" || req.method == "PUT") {
      curl.easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
      curl.easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    }
    curl.easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
    curl.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl.easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl.easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl.easy_setopt(c, CURLOPT_HEADERDATA, &sink);
    curl.easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl.easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.connect_timeout.count()));
    curl.easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(req.total_timeout.count()));
    curl.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (req.stall_timeout.count() > 0) {
      curl.easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
      curl.easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(req.stall_timeout.count()));
    }
    // The connect timeout covers name resolution, but on a timeout libcurl joins its
    // resolver thread, which waits out getaddrinfo (10 s and more with a dead resolver).
    // QUICK_EXIT (7.87) lets the thread finish on its own, so the timeouts above bound
    // the call, DNS included.
#if LIBCURL_VERSION_NUM >= 0x075700
    curl.easy_setopt(c, CURLOPT_QUICK_EXIT, 1L);
#endif
    curl.easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl.easy_setopt(c, CURLOPT_PROTOCOLS_STR, req.protocols.c_str());
    // A HEAD answer has no body: its Content-Length (an OCI blob's size) is not a download.
    if (req.method != "HEAD") {
      curl.easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(req.max_response_bytes));
    }
    // Proxies from the environment must never see metadata or control traffic.
    curl.easy_setopt(c, CURLOPT_PROXY, "");
    curl.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl.easy_setopt(c, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
    if (!tls_.ca_file.empty() || !tls_.ca_fingerprint_sha256.empty()) {
      // Pinned: the bundle (or the fingerprint) alone. Debian's libcurl would otherwise also
      // trust its built-in CApath (/etc/ssl/certs), i.e. every public CA.
      // With a fingerprint the verify callback is the whole verification: no file at all
      // (a minimal system has no ca-certificates bundle for curl's default to point at).
      curl.easy_setopt(c, CURLOPT_CAPATH, nullptr);
      curl.easy_setopt(c, CURLOPT_CAINFO, tls_.ca_file.empty() ? nullptr : tls_.ca_file.c_str());
    }
    if (!tls_.ca_fingerprint_sha256.empty()) {
      curl.easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, install_ca_pin);
      curl.easy_setopt(c, CURLOPT_SSL_CTX_DATA, &tls_.ca_fingerprint_sha256);
    }
    if (!tls_.client_cert_file.empty()) {
      curl.easy_setopt(c, CURLOPT_SSLCERT, tls_.client_cert_file.c_str());
      curl.easy_setopt(c, CURLOPT_SSLKEY, tls_.client_key_file.c_str());
    }

    const CURLcode rc = curl.easy_perform(c);
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
      std::string detail = errbuf[0] ? errbuf : curl.easy_strerror(rc);
      return fail(classify(rc), req.method + " " + req.url + ": " + detail,
                  rc == CURLE_OPERATION_TIMEDOUT ? "the server is slow or unreachable; retry later"
                                                 : "check that the service is up and the URL is right");
    }
    curl.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return response;
  }

 private:
  TlsOptions tls_;
  CurlPtr handle_{nullptr, nullptr};
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
