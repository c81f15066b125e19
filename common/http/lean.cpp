// The lean backend of HttpClient: HTTP/1.1 from Boost.Beast over Boost.Asio, TLS from
// OpenSSL (asio::ssl). For the agent's control connection and the cairn-control CLI.
//
// Why a second backend: libcurl, as Debian builds it, maps some twenty libraries into the
// process (gnutls, nettle, krb5, ldap, sasl, ssh2, rtmp, p11-kit, ...), about 2.8 MiB of
// resident pages in an agent that heartbeats for months and uses none of them. This one maps
// OpenSSL alone. Downloads (body_sink, stall_timeout: OCI blobs) and cloud metadata stay with
// libcurl (curl.cpp), which the agent loads only when it needs it.
//
// One connection, kept alive between calls; one call at a time (not thread-safe). A call runs
// the client's own io_context until its operation completes; the deadline of each step is the
// tcp_stream's expiry, so no step outlives HttpRequest's timeouts.
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/http.hpp"
#include "common/http/tls_pin.hpp"

namespace cairn {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

constexpr std::uint32_t kMaxHeaderBytes = 16 * 1024;

struct Url {
  std::string scheme;
  std::string host;  // without brackets
  std::string port;
  std::string target;  // path and query
  bool host_is_ip = false;
  [[nodiscard]] std::string authority() const {
    const bool v6 = host.find(':') != std::string::npos;
    const bool default_port = (scheme == "https" && port == "443") || (scheme == "http" && port == "80");
    return (v6 ? "[" + host + "]" : host) + (default_port ? "" : ":" + port);
  }
};

Result<Url> parse_url(std::string_view text) {
  const auto bad = [&](const std::string& why) {
    return fail(Errc::config, "URL '" + std::string(text.substr(0, 200)) + "': " + why,
                "write it as https://HOST[:PORT]/PATH");
  };
  if (std::any_of(text.begin(), text.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; })) {
    return bad("contains a space or a control character");
  }
  const auto sep = text.find("://");
  if (sep == std::string_view::npos) return bad("no scheme");
  Url url;
  url.scheme = std::string(text.substr(0, sep));
  std::transform(url.scheme.begin(), url.scheme.end(), url.scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (url.scheme != "http" && url.scheme != "https") return bad("scheme '" + url.scheme + "' is not http or https");
  auto rest = text.substr(sep + 3);
  rest = rest.substr(0, rest.find('#'));  // a fragment never goes to the server
  const auto path_at = rest.find_first_of("/?");
  const auto authority = rest.substr(0, path_at);
  url.target = path_at == std::string_view::npos ? "/" : std::string(rest.substr(path_at));
  if (url.target.front() == '?') url.target.insert(0, "/");
  if (authority.find('@') != std::string_view::npos) return bad("credentials in the URL are not accepted");
  std::string_view port;
  if (authority.starts_with("[")) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return bad("unclosed '[' in the host");
    url.host = std::string(authority.substr(1, close - 1));
    const auto after = authority.substr(close + 1);
    if (!after.empty() && !after.starts_with(":")) return bad("junk after the IPv6 address");
    if (!after.empty()) port = after.substr(1);
  } else {
    const auto colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (url.host.empty()) return bad("no host");
  if (port.empty()) {
    url.port = url.scheme == "https" ? "443" : "80";
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) return bad("bad port");
    const int n = std::stoi(std::string(port));
    if (n < 1 || n > 65535) return bad("port out of range");
    url.port = std::to_string(n);
  }
  boost::system::error_code ec;
  asio::ip::make_address(url.host, ec);
  url.host_is_ip = !ec;
  return url;
}

bool scheme_allowed(const std::string& protocols, const std::string& scheme) {
  std::string_view list = protocols;
  while (!list.empty()) {
    const auto comma = list.find(',');
    if (list.substr(0, comma) == scheme) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// getaddrinfo has no timeout of its own (a dead resolver holds it 10 s and more): it runs on
// a thread of its own, and a call that gives up leaves the thread to finish on its own with
// nothing but its shared state (libcurl's CURLOPT_QUICK_EXIT does the same).
Result<std::vector<tcp::endpoint>> resolve(const Url& url, SteadyClock::time_point deadline) {
  if (url.host_is_ip) return std::vector<tcp::endpoint>{{asio::ip::make_address(url.host), static_cast<unsigned short>(std::stoi(url.port))}};
  struct Answer {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    int rc = 0;
    std::vector<tcp::endpoint> endpoints;
  };
  auto answer = std::make_shared<Answer>();
  std::thread([answer, host = url.host, port = url.port] {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* list = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
    std::vector<tcp::endpoint> endpoints;
    for (addrinfo* a = list; rc == 0 && a != nullptr; a = a->ai_next) {
      if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
      tcp::endpoint ep;
      std::memcpy(ep.data(), a->ai_addr, a->ai_addrlen);
      ep.resize(a->ai_addrlen);
      endpoints.push_back(ep);
    }
    if (list != nullptr) ::freeaddrinfo(list);
    std::lock_guard lock(answer->mutex);
    answer->rc = rc;
    answer->endpoints = std::move(endpoints);
    answer->done = true;
    answer->done_cv.notify_all();
  }).detach();
  std::unique_lock lock(answer->mutex);
  if (!answer->done_cv.wait_until(lock, deadline, [&] { return answer->done; })) {
    return fail(Errc::unavailable, "resolve " + url.host + ": no answer in time",
                "check the node's DNS servers (/etc/resolv.conf) or use an IP address");
  }
  if (answer->rc != 0 || answer->endpoints.empty()) {
    return fail(Errc::unavailable, "resolve " + url.host + ": " + (answer->rc != 0 ? ::gai_strerror(answer->rc) : "no address"),
                "check the host name and the node's DNS");
  }
  return std::move(answer->endpoints);
}

std::timespec mtime_of(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return {};
  return st.st_mtim;
}

bool same_time(const std::timespec& a, const std::timespec& b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

std::string openssl_reason() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return text;
}

// Whether an error on a reused connection means the server had closed it while idle (the
// request never reached it), so one new connection may carry the request again.
bool closed_by_peer(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == ssl::error::stream_truncated;
}

class LeanClient final : public HttpClient {
 public:
  explicit LeanClient(TlsOptions tls) : tls_(std::move(tls)) {}

  Result<HttpResponse> send(const HttpRequest& req) override {
    if (req.body_sink || req.stall_timeout.count() > 0) {
      return fail(Errc::internal, req.method + " " + req.url + ": streamed downloads need make_http_client (libcurl)");
    }
    auto url = parse_url(req.url);
    if (!url) return fail(url.error());
    if (!scheme_allowed(req.protocols, url->scheme)) {
      return fail(Errc::config, req.method + " " + req.url + ": " + url->scheme + " is not allowed here",
                  url->scheme == "http" ? "use an https:// URL" : "check the URL");
    }
    const auto verb = http::string_to_verb(req.method);
    if (verb == http::verb::unknown) return fail(Errc::internal, "HTTP method '" + req.method + "' unknown");
    for (const auto& [name, value] : req.headers) {
      if ((name + value).find_first_of("\r\n") != std::string::npos || name.empty()) {
        return fail(Errc::internal, req.method + " " + req.url + ": header '" + name + "' holds a line break");
      }
    }
    const auto start = SteadyClock::now();
    const Deadlines deadlines{start + req.connect_timeout, start + req.total_timeout};
    const std::string key = url->scheme + "://" + url->authority();
    const bool files_unchanged = tls_files_unchanged();
    if (key != connection_key_ || !files_unchanged || !idle_connection_alive()) close();

    http::request<http::string_body> request(verb, url->target, 11);
    request.set(http::field::host, url->authority());
    for (const auto& [name, value] : req.headers) request.insert(name, value);
    request.body() = req.body;
    if (!req.body.empty() || verb == http::verb::post || verb == http::verb::put) request.prepare_payload();

    for (int attempt = 0;; ++attempt) {
      const bool reused = is_open();
      if (!reused) {
        if (auto ok = connect(*url, deadlines); !ok) {
          close();
          return fail(ok.error().with_context(req.method + " " + req.url));
        }
        connection_key_ = key;
      }
      bool got_some = false;
      auto response = exchange(request, req, deadlines.total, got_some);
      if (response) return response;
      close();
      // A kept-alive connection the server closed while idle: the request never reached it.
      if (reused && attempt == 0 && !got_some && closed_by_peer(last_error_)) continue;
      return fail(response.error());
    }
  }

 private:
  struct Deadlines {
    SteadyClock::time_point connect;  // name resolution, TCP connect and TLS handshake
    SteadyClock::time_point total;
  };

  [[nodiscard]] bool is_open() const { return plain_ != nullptr || tls_stream_ != nullptr; }

  void close() {
    boost::system::error_code ignored;
    if (tls_stream_) beast::get_lowest_layer(*tls_stream_).socket().close(ignored);
    if (plain_) plain_->socket().close(ignored);
    tls_stream_.reset();
    plain_.reset();
    buffer_.clear();
    buffer_.shrink_to_fit();
    connection_key_.clear();
  }

  // The rotated certificate (cairn-agent rotates in place) takes effect at the next call: a
  // changed file drops the TLS context and the connection made with the old one.
  bool tls_files_unchanged() {
    const auto cert = mtime_of(tls_.client_cert_file);
    const auto key = mtime_of(tls_.client_key_file);
    const bool same = same_time(cert, cert_mtime_) && same_time(key, key_mtime_);
    if (!same) {
      ssl_ctx_.reset();
      cert_mtime_ = cert;
      key_mtime_ = key;
    }
    return same;
  }

  // A kept-alive connection with something to read while no request is out has been closed
  // by the server (or it sent junk): not worth reusing.
  bool idle_connection_alive() {
    if (!is_open()) return true;
    pollfd p{};
    p.fd = tls_stream_ ? beast::get_lowest_layer(*tls_stream_).socket().native_handle() : plain_->socket().native_handle();
    p.events = POLLIN;
    return ::poll(&p, 1, 0) == 0 && buffer_.size() == 0;
  }

  // Runs the io_context until the operation `start` began has completed; the stream's expiry
  // (set by the caller) bounds it.
  template <class Start>
  beast::error_code run(Start&& start) {
    beast::error_code result = asio::error::would_block;
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc_.restart();
    ioc_.run();
    return result;
  }

  Status make_tls_context() {
    if (ssl_ctx_) return {};
    auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX* c = ctx->native_handle();
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);  // an idle connection holds no record buffers
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    if (!tls_.ca_fingerprint_sha256.empty()) {
      http_detail::pin_ca_fingerprint(c, &tls_.ca_fingerprint_sha256);
    } else if (!tls_.ca_file.empty()) {
      if (SSL_CTX_load_verify_locations(c, tls_.ca_file.c_str(), nullptr) != 1) {
        return fail(Errc::refused, "CA bundle " + tls_.ca_file + " could not be read: " + openssl_reason(),
                    "check the path and that it holds PEM certificates");
      }
    } else if (SSL_CTX_set_default_verify_paths(c) != 1) {
      return fail(Errc::refused, "the system's CA store could not be read: " + openssl_reason(), "install ca-certificates");
    }
    if (!tls_.client_cert_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(c, tls_.client_cert_file.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(c, tls_.client_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(c) != 1) {
        return fail(Errc::refused,
                    "client certificate " + tls_.client_cert_file + " with key " + tls_.client_key_file +
                        " is unusable: " + openssl_reason(),
                    "enroll the node again if its credentials are damaged");
      }
    }
    ssl_ctx_ = std::move(ctx);
    return {};
  }

  Status connect(const Url& url, const Deadlines& deadlines) {
    const auto connect_by = std::min(deadlines.connect, deadlines.total);
    const std::string where = url.host + ":" + url.port;
    auto endpoints = resolve(url, connect_by);
    if (!endpoints) return fail(endpoints.error());
    const auto refused_or_down = [&](const beast::error_code& ec, const std::string& step) -> Status {
      if (ec == beast::error::timeout) {
        return fail(Errc::unavailable, step + " " + where + ": timed out", "the server is slow or unreachable; retry later");
      }
      return fail(Errc::unavailable, step + " " + where + ": " + ec.message(),
                  "check that the service is up and the URL is right");
    };
    if (url.scheme == "http") {
      plain_ = std::make_unique<beast::tcp_stream>(ioc_);
      plain_->expires_at(connect_by);
      if (auto ec = run([&](auto handler) { plain_->async_connect(*endpoints, handler); })) return refused_or_down(ec, "connect");
      plain_->socket().set_option(tcp::no_delay(true));
      return {};
    }
    if (auto ok = make_tls_context(); !ok) return ok;
    tls_stream_ = std::make_unique<TlsStream>(ioc_, *ssl_ctx_);
    SSL* ssl = tls_stream_->native_handle();
    if (url.host_is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), url.host.c_str());
    } else if (SSL_set_tlsext_host_name(ssl, url.host.c_str()) != 1 || SSL_set1_host(ssl, url.host.c_str()) != 1) {
      return fail(Errc::config, "TLS host name '" + url.host + "' refused by OpenSSL", "check the URL");
    }
    auto& layer = beast::get_lowest_layer(*tls_stream_);
    layer.expires_at(connect_by);
    if (auto ec = run([&](auto handler) { layer.async_connect(*endpoints, handler); })) return refused_or_down(ec, "connect");
    layer.socket().set_option(tcp::no_delay(true));
    layer.expires_at(connect_by);
    if (auto ec = run([&](auto handler) { tls_stream_->async_handshake(ssl::stream_base::client, handler); })) {
      const long verify = SSL_get_verify_result(ssl);
      if (verify != X509_V_OK) {
        return fail(Errc::refused, "TLS peer " + where + " not verified: " + X509_verify_cert_error_string(verify),
                    "check the pinned CA (ca_file or ca_fingerprint) and the host name in the URL");
      }
      return refused_or_down(ec, "TLS handshake with");
    }
    return {};
  }

  Result<HttpResponse> exchange(http::request<http::string_body>& request, const HttpRequest& req,
                                SteadyClock::time_point deadline, bool& got_some) {
    return tls_stream_ ? exchange_over(*tls_stream_, request, req, deadline, got_some)
                       : exchange_over(*plain_, request, req, deadline, got_some);
  }

  template <class Stream>
  Result<HttpResponse> exchange_over(Stream& stream, http::request<http::string_body>& request, const HttpRequest& req,
                                     SteadyClock::time_point deadline, bool& got_some) {
    const std::string what = req.method + " " + req.url;
    const auto down = [&](const beast::error_code& ec) -> Result<HttpResponse> {
      if (ec == beast::error::timeout) {
        return fail(Errc::unavailable, what + ": timed out", "the server is slow or unreachable; retry later");
      }
      return fail(Errc::unavailable, what + ": " + ec.message(), "check that the service is up and the URL is right");
    };
    auto& layer = beast::get_lowest_layer(stream);
    layer.expires_at(deadline);
    last_error_ = run([&](auto handler) { http::async_write(stream, request, handler); });
    if (last_error_) return down(last_error_);

    http::response_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(req.max_response_bytes);
    if (request.method() == http::verb::head) parser.skip(true);  // its Content-Length is no body
    layer.expires_at(deadline);
    // The header first: Beast 1.74 does not hold a Content-Length over body_limit against the
    // limit when it reads a whole message eagerly, so that one is checked here. (A chunked or
    // close-delimited body is counted against body_limit as it arrives.)
    auto ec = run([&](auto handler) { http::async_read_header(stream, buffer_, parser, handler); });
    if (!ec && request.method() != http::verb::head && parser.content_length() &&
        *parser.content_length() > req.max_response_bytes) {
      ec = http::error::body_limit;
    }
    if (!ec && !parser.is_done()) ec = run([&](auto handler) { http::async_read(stream, buffer_, parser, handler); });
    last_error_ = ec;
    got_some = parser.got_some();
    if (ec == http::error::body_limit) {
      return fail(Errc::data, what + ": response larger than " + std::to_string(req.max_response_bytes) + " bytes",
                  "the server sent more than Cairn accepts; check the URL");
    }
    if (ec == http::error::header_limit) {
      return fail(Errc::data, what + ": response headers larger than " + std::to_string(kMaxHeaderBytes) + " bytes",
                  "the server sent more than Cairn accepts; check the URL");
    }
    if (ec) return down(ec);
    layer.expires_never();

    auto message = parser.release();
    HttpResponse response;
    response.status = static_cast<long>(message.result_int());
    for (const auto& field : message) {
      std::string name(field.name_string());
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      response.headers.emplace_back(std::move(name), std::string(field.value()));
    }
    const bool keep = message.keep_alive();
    response.body = std::move(message.body());
    if (!keep) {
      close();
    } else if (buffer_.size() == 0) {
      buffer_.shrink_to_fit();
    }
    return response;
  }

  TlsOptions tls_;  // before ssl_ctx_: the pinned fingerprint's address is the verify callback's
  asio::io_context ioc_{1};
  std::unique_ptr<ssl::context> ssl_ctx_;
  std::timespec cert_mtime_{};
  std::timespec key_mtime_{};
  std::unique_ptr<TlsStream> tls_stream_;
  std::unique_ptr<beast::tcp_stream> plain_;
  beast::flat_buffer buffer_;
  std::string connection_key_;  // scheme://authority of the open connection
  beast::error_code last_error_;  // of the last write or read
};

}  // namespace

std::unique_ptr<HttpClient> make_lean_http_client(TlsOptions tls) { return std::make_unique<LeanClient>(std::move(tls)); }

}  // namespace cairn
