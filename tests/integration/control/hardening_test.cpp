// The HTTPS server under hostile or careless clients: pipelining floods, old TLS versions and
// suites, resumption attempts, slow and idle connections, enrollment floods. The real
// `cairn-control serve` on 127.0.0.1, raw OpenSSL clients that do exactly what a test says.
#include <doctest/doctest.h>

#include <openssl/err.h>

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/control/server_helpers.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"

namespace cairn::test {
namespace {

struct RawOptions {
  int min_version = 0;
  int max_version = 0;
  const EnrolledNode* node = nullptr;  // present this node's certificate
  SSL_SESSION* resume = nullptr;       // offer this session
  const char* tls12_ciphers = nullptr;
  bool legacy = false;  // let the client offer TLS 1.0/1.1 (OpenSSL's security level 0)
};

// A raw OpenSSL client connection; `ssl` is null when the handshake failed (`error` says why).
struct RawClient {
  SslCtxPtr ctx;
  UniqueFd fd;
  SslPtr ssl;
  std::string error;
  [[nodiscard]] bool connected() const { return ssl != nullptr; }
};

RawClient raw_connect(const ControlServer& server, const RawOptions& o) {
  RawClient c;
  c.ctx.reset(SSL_CTX_new(TLS_client_method()));
  REQUIRE(c.ctx);
  SSL_CTX* ctx = c.ctx.get();
  if (o.legacy) {
    SSL_CTX_set_security_level(ctx, 0);
    REQUIRE(SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0") == 1);
  }
  if (o.min_version != 0) SSL_CTX_set_min_proto_version(ctx, o.min_version);
  if (o.max_version != 0) SSL_CTX_set_max_proto_version(ctx, o.max_version);
  if (o.tls12_ciphers != nullptr) REQUIRE(SSL_CTX_set_cipher_list(ctx, o.tls12_ciphers) == 1);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
  REQUIRE(SSL_CTX_load_verify_locations(ctx, (server.state() / "ca.crt").c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (o.node != nullptr) {
    REQUIRE(SSL_CTX_use_certificate_file(ctx, o.node->credential.cert.c_str(), SSL_FILETYPE_PEM) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(ctx, o.node->credential.key.c_str(), SSL_FILETYPE_PEM) == 1);
  }
  c.fd = connect_tcp(server.port());
  timeval tv{10, 0};
  ::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  SslPtr ssl(SSL_new(ctx));
  REQUIRE(ssl);
  SSL_set_fd(ssl.get(), c.fd.get());
  if (o.resume != nullptr) REQUIRE(SSL_set_session(ssl.get(), o.resume) == 1);
  ERR_clear_error();
  if (SSL_connect(ssl.get()) != 1) {
    c.error = openssl_error();
    if (c.error.empty()) c.error = "handshake failed";
    return c;
  }
  c.ssl = std::move(ssl);
  return c;
}

// One request on a connected client; the whole answer (headers + body), empty if the
// connection ended first.
std::string round_trip(RawClient& c, const std::string& request) {
  REQUIRE(SSL_write(c.ssl.get(), request.data(), static_cast<int>(request.size())) ==
          static_cast<int>(request.size()));
  std::string in;
  char buf[16384];
  for (;;) {
    const auto end = in.find("\r\n\r\n");
    if (end != std::string::npos) {
      const auto cl = in.find("Content-Length: ");
      REQUIRE(cl != std::string::npos);
      const auto length = std::stoul(in.substr(cl + 16));
      if (in.size() >= end + 4 + length) return in.substr(0, end + 4 + length);
    }
    const int n = SSL_read(c.ssl.get(), buf, sizeof buf);
    if (n <= 0) return {};
    in.append(buf, static_cast<std::size_t>(n));
  }
}

std::string get(std::string_view target, bool close = false) {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (close ? "Connection: close\r\n" : "") +
         "\r\n";
}

// How the server ended the connection, read on a blocking client: "close_notify" (a TLS
// close), "eof" (TCP closed without close_notify), "timeout" (still open after `within`).
std::string wait_for_close(RawClient& c, std::chrono::seconds within) {
  timeval tv{static_cast<time_t>(within.count()), 0};
  ::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int n = SSL_read(c.ssl.get(), buf, sizeof buf);
    if (n > 0) continue;
    const int err = SSL_get_error(c.ssl.get(), n);
    if (err == SSL_ERROR_ZERO_RETURN) return "close_notify";
    if (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) return "timeout";
    return "eof";
  }
}

// Writes `count` pipelined requests on one connection while reading the answers (the server
// stops reading while its answers are not taken, so a client that only writes would stall
// itself). Request i is GET /healthz when i % 1000 == 0, else GET /v1/seq/i (a 404 whose
// message names the path, so the order of the answers is checked one by one). Returns the
// number of answers that came in order; `failure` says what went wrong first.
std::size_t pipeline(RawClient& c, std::size_t count, std::string& failure) {
  SSL* ssl = c.ssl.get();
  ::fcntl(c.fd.get(), F_SETFL, ::fcntl(c.fd.get(), F_GETFL) | O_NONBLOCK);
  std::size_t sent = 0;
  std::size_t answered = 0;
  std::string out;
  std::size_t out_pos = 0;
  std::string in;
  std::size_t in_pos = 0;
  std::vector<char> buf(1 << 16);
  const auto deadline = SteadyClock::now() + 240s;
  while (answered < count) {
    if (SteadyClock::now() > deadline) {
      failure = "timed out after " + std::to_string(answered) + " answers";
      return answered;
    }
    if (out_pos == out.size() && sent < count) {
      out.clear();
      out_pos = 0;
      for (int k = 0; k < 512 && sent < count; ++k, ++sent) {
        out += get(sent % 1000 == 0 ? std::string("/healthz") : "/v1/seq/" + std::to_string(sent));
      }
    }
    bool progress = false;
    std::size_t n = 0;
    if (out_pos < out.size()) {
      ERR_clear_error();
      if (SSL_write_ex(ssl, out.data() + out_pos, out.size() - out_pos, &n) == 1) {
        out_pos += n;
        progress = true;
      } else if (const int e = SSL_get_error(ssl, 0); e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        failure = "write failed after " + std::to_string(answered) + " answers: " + openssl_error();
        return answered;
      }
    }
    ERR_clear_error();
    if (SSL_read_ex(ssl, buf.data(), buf.size(), &n) == 1) {
      in.append(buf.data(), n);
      progress = true;
    } else if (const int e = SSL_get_error(ssl, 0); e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      failure = "the server closed the connection after " + std::to_string(answered) + " answers";
      return answered;
    }
    for (;;) {  // every whole answer in `in`
      const auto end = in.find("\r\n\r\n", in_pos);
      if (end == std::string::npos) break;
      const auto cl = in.find("Content-Length: ", in_pos);
      if (cl == std::string::npos || cl > end) {
        failure = "answer without Content-Length";
        return answered;
      }
      const auto length = std::stoul(in.substr(cl + 16, 12));
      if (in.size() < end + 4 + length) break;
      const std::string_view head(in.data() + in_pos, end - in_pos);
      const std::string_view body(in.data() + end + 4, length);
      const bool ok = answered % 1000 == 0
                          ? head.starts_with("HTTP/1.1 200 ") && body == "ok"
                          : head.starts_with("HTTP/1.1 404 ") &&
                                body.find("GET /v1/seq/" + std::to_string(answered) + "\"") != std::string_view::npos;
      if (!ok) {
        failure = "answer " + std::to_string(answered) + " out of order or wrong: " + std::string(head) + " " +
                  std::string(body);
        return answered;
      }
      ++answered;
      in_pos = end + 4 + length;
    }
    if (in_pos > (1 << 20)) {
      in.erase(0, in_pos);
      in_pos = 0;
    }
    if (!progress) {
      pollfd p{c.fd.get(), static_cast<short>(POLLIN | (out_pos < out.size() ? POLLOUT : 0)), 0};
      ::poll(&p, 1, 1000);
    }
  }
  return answered;
}

#define REQUIRE_CONTROL() \
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)")

}  // namespace

TEST_CASE("100,000 pipelined requests on one TLS 1.3 and one TLS 1.2 connection are answered in order") {
  REQUIRE_CONTROL();
  ControlServer server;
  constexpr std::size_t kRequests = 100'000;
  for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    CAPTURE(version);
    // No client certificate: anyone who reaches the port can do this.
    auto client = raw_connect(server, {.min_version = version, .max_version = version});
    REQUIRE_MESSAGE(client.connected(), client.error);
    std::string failure;
    CHECK_MESSAGE(pipeline(client, kRequests, failure) == kRequests, failure);
  }
  REQUIRE(server.process().running());
  auto health = send(server.anonymous(), "GET", server.url("/healthz"));
  REQUIRE(health);
  CHECK(health->status == 200);
}

TEST_CASE("TLS 1.0 and 1.1 are refused, and --tls-min 1.3 refuses TLS 1.2") {
  REQUIRE_CONTROL();
  ControlServer server;
  for (const int version : {TLS1_VERSION, TLS1_1_VERSION}) {
    CAPTURE(version);
    auto old = raw_connect(server, {.min_version = version, .max_version = version, .legacy = true});
    CHECK_FALSE(old.connected());
  }
  auto v12 = raw_connect(server, {.max_version = TLS1_2_VERSION});
  REQUIRE_MESSAGE(v12.connected(), v12.error);
  CHECK(std::string(SSL_get_version(v12.ssl.get())) == "TLSv1.2");

  ControlServer strict({"--tls-min", "1.3"});
  CHECK_FALSE(raw_connect(strict, {.max_version = TLS1_2_VERSION}).connected());
  auto v13 = raw_connect(strict, {});
  REQUIRE_MESSAGE(v13.connected(), v13.error);
  CHECK(std::string(SSL_get_version(v13.ssl.get())) == "TLSv1.3");
  CHECK(round_trip(v13, get("/healthz")).starts_with("HTTP/1.1 200 "));
}

TEST_CASE("TLS 1.2 offers only ECDHE with AEAD suites") {
  REQUIRE_CONTROL();
  ControlServer server;
  // CBC and static-RSA suites only: no suite in common.
  auto cbc = raw_connect(server, {.max_version = TLS1_2_VERSION,
                                  .tls12_ciphers = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:"
                                                   "ECDHE-RSA-AES128-SHA:AES128-SHA:AES128-GCM-SHA256"});
  CHECK_FALSE(cbc.connected());
  auto aead = raw_connect(server, {.max_version = TLS1_2_VERSION});
  REQUIRE_MESSAGE(aead.connected(), aead.error);
  const std::string suite = SSL_get_cipher_name(aead.ssl.get());
  CHECK(suite.starts_with("ECDHE-"));
  CHECK((suite.find("GCM") != std::string::npos || suite.find("CHACHA20") != std::string::npos));
}

TEST_CASE("no session is ever resumed: a returning client does a full handshake and shows its certificate again") {
  REQUIRE_CONTROL();
  ControlServer server;
  const auto node = enroll_node(server);
  const std::string heartbeat = heartbeat_request(server);
  for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    auto first = raw_connect(server, {.min_version = version, .max_version = version, .node = &node});
    REQUIRE_MESSAGE(first.connected(), first.error);
    REQUIRE(round_trip(first, heartbeat).starts_with("HTTP/1.1 200 "));  // TLS 1.3 tickets would have come by now
    SSL_SESSION* session = SSL_get1_session(first.ssl.get());
    REQUIRE(session != nullptr);
    SSL_shutdown(first.ssl.get());

    // The same session offered again, now without a certificate: a resumed session would
    // carry the node's identity without proof (and without a fresh expiry check).
    auto second = raw_connect(server, {.min_version = version, .max_version = version, .resume = session});
    SSL_SESSION_free(session);
    REQUIRE_MESSAGE(second.connected(), second.error);
    CHECK(SSL_session_reused(second.ssl.get()) == 0);
    const std::string answer = round_trip(second, heartbeat);
    CHECK(answer.starts_with("HTTP/1.1 401 "));
    CHECK(answer.find("client_cert_required") != std::string::npos);
  }
}

TEST_CASE("an idle keep-alive connection is closed after the idle timeout, with a close_notify") {
  REQUIRE_CONTROL();
  ControlServer server({"--idle-timeout", "1s"});
  auto client = raw_connect(server, {});
  REQUIRE_MESSAGE(client.connected(), client.error);
  REQUIRE(round_trip(client, get("/healthz")).starts_with("HTTP/1.1 200 "));
  const auto start = SteadyClock::now();
  CHECK(wait_for_close(client, 10s) == "close_notify");
  const auto waited = SteadyClock::now() - start;
  CHECK(waited >= 900ms);
  CHECK(waited < 6s);
}

TEST_CASE("a body that stops arriving is cut by the body timeout, not the header timeout") {
  REQUIRE_CONTROL();
  ControlServer server({"--body-timeout", "1s", "--header-timeout", "30s"});
  auto client = raw_connect(server, {});
  REQUIRE_MESSAGE(client.connected(), client.error);
  const std::string partial =
      "POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"identity\":";
  REQUIRE(SSL_write(client.ssl.get(), partial.data(), static_cast<int>(partial.size())) ==
          static_cast<int>(partial.size()));
  const auto start = SteadyClock::now();
  CHECK(wait_for_close(client, 20s) == "close_notify");
  CHECK(SteadyClock::now() - start < 8s);
}

TEST_CASE("after --max-requests-per-connection answers the connection closes, the last answer saying so") {
  REQUIRE_CONTROL();
  ControlServer server({"--max-requests-per-connection", "3"});
  auto client = raw_connect(server, {});
  REQUIRE_MESSAGE(client.connected(), client.error);
  const auto first = round_trip(client, get("/healthz"));
  const auto second = round_trip(client, get("/healthz"));
  const auto third = round_trip(client, get("/healthz"));
  CHECK(first.find("Connection: close") == std::string::npos);
  CHECK(second.find("Connection: close") == std::string::npos);
  CHECK(third.starts_with("HTTP/1.1 200 "));
  CHECK(third.find("Connection: close") != std::string::npos);
  CHECK(wait_for_close(client, 5s) == "close_notify");
}

TEST_CASE("an enrollment flood gets 429 with Retry-After while heartbeats go on, and /metrics counts it") {
  REQUIRE_CONTROL();
  ControlServer server({"--enroll-rate", "1", "--enroll-burst", "3"});
  const auto node = enroll_node(server);  // one of the burst
  int throttled = 0;
  int heartbeats_ok = 0;
  std::string retry_after;
  for (int i = 0; i < 20; ++i) {
    auto flood = send(server.anonymous(), "POST", server.url("/v1/enroll"), "{}",
                      {{"Authorization", "Bearer not-a-token"}, {"Content-Type", "application/json"}});
    REQUIRE(flood);
    if (flood->status == 429) {
      ++throttled;
      CHECK(error_code_of(*flood) == "enroll_rate_limited");
      retry_after = flood->header("retry-after").value_or("");
    } else {
      CHECK((flood->status == 400 || flood->status == 401));  // let through by the limit, refused on its merits
    }
    auto hb = send(as_node(server, node), "POST", server.url("/v1/heartbeat"), heartbeat_body(),
                   {{"Content-Type", "application/json"}});
    REQUIRE(hb);
    if (hb->status == 200) ++heartbeats_ok;
  }
  CHECK(throttled >= 15);
  CHECK(retry_after == "1");
  CHECK(heartbeats_ok == 20);
  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metric_value(metrics->body, "cairn_enroll_throttled_total") == static_cast<double>(throttled));
}

TEST_CASE("--metrics-listen moves /metrics to a plain-HTTP address; the HTTPS listener answers 404 for it") {
  REQUIRE_CONTROL();
  ControlServer server({"--metrics-listen", "127.0.0.1:0"});
  std::string log;
  REQUIRE(wait_for([&] { return (log = slurp(server.log_path())).find(" metrics_port=") != std::string::npos; }, 10s));
  const int metrics_port = std::stoi(log.substr(log.find(" metrics_port=") + 14));
  REQUIRE(metrics_port > 0);
  CHECK(metrics_port != server.port());

  auto plain = make_http_client(TlsOptions{});
  HttpRequest request;
  request.method = "GET";
  request.url = "http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics";
  request.total_timeout = 10s;
  auto scraped = plain->send(request);
  REQUIRE_MESSAGE(scraped.has_value(), (scraped ? "" : scraped.error().message));
  CHECK(scraped->status == 200);
  CHECK(metric_value(scraped->body, "cairn_connections_open").has_value());
  CHECK(metric_value(scraped->body, "cairn_tls_kernel_offload_available").has_value());
  request.url = "http://127.0.0.1:" + std::to_string(metrics_port) + "/v1/heartbeat";
  auto other = plain->send(request);
  REQUIRE(other);
  CHECK(other->status == 404);

  auto over_tls = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(over_tls);
  CHECK(over_tls->status == 404);
  auto health = send(server.anonymous(), "GET", server.url("/healthz"));
  REQUIRE(health);
  CHECK(health->status == 200);
}

TEST_CASE("heartbeats beyond the writer's queue get 503 busy with Retry-After, and the queued ones are stored") {
  REQUIRE_CONTROL();
  ControlServer server({"--max-pending-heartbeats", "2"});
  const auto node = enroll_node(server);
  // The test holds the database's write lock, so the writer's commit waits (busy_timeout) and
  // the heartbeats behind it pile up in its queue.
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open((server.state() / "control.db").c_str(), &raw) == SQLITE_OK);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> db(raw, &sqlite3_close);
  REQUIRE(sqlite3_exec(db.get(), "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);

  constexpr int kClients = 12;
  std::vector<int> statuses(kClients, 0);
  std::vector<std::string> codes(kClients);
  std::vector<std::string> retry_after(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto hb = send(as_node(server, node), "POST", server.url("/v1/heartbeat"), heartbeat_body(),
                     {{"Content-Type", "application/json"}});
      if (hb) {
        statuses[static_cast<std::size_t>(i)] = hb->status;
        codes[static_cast<std::size_t>(i)] = hb->status == 200 ? "" : error_code_of(*hb);
        retry_after[static_cast<std::size_t>(i)] = hb->header("retry-after").value_or("");
      }
    });
  }
  // The refusals come at once, while the lock is still held; then the queue drains.
  const bool refused_early = wait_for([&] {
    return std::count(statuses.begin(), statuses.end(), 503) >= kClients / 2;
  }, 4s);
  REQUIRE(sqlite3_exec(db.get(), "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  for (auto& t : clients) t.join();
  CHECK(refused_early);
  int ok = 0;
  for (int i = 0; i < kClients; ++i) {
    CAPTURE(i);
    const auto k = static_cast<std::size_t>(i);
    if (statuses[k] == 200) {
      ++ok;
    } else {
      CHECK(statuses[k] == 503);
      CHECK(codes[k] == "busy");
      CHECK(retry_after[k] == "1");
    }
  }
  // What the writer had taken and the two queued behind it were stored once the lock went.
  CHECK(ok >= 1);
  CHECK(ok <= kClients / 2);
  REQUIRE(server.process().running());
  auto after = send(as_node(server, node), "POST", server.url("/v1/heartbeat"), heartbeat_body(),
                    {{"Content-Type", "application/json"}});
  REQUIRE(after);
  CHECK(after->status == 200);
}

TEST_CASE("an endless chunk line or trailer is refused at the header limit, not buffered") {
  REQUIRE_CONTROL();
  ControlServer server;
  for (const auto* start : {"1;ext=", "0\r\nX-Trailer: "}) {
    CAPTURE(start);
    auto client = raw_connect(server, {});
    REQUIRE_MESSAGE(client.connected(), client.error);
    const std::string head =
        std::string("POST /v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n") + start;
    REQUIRE(SSL_write(client.ssl.get(), head.data(), static_cast<int>(head.size())) == static_cast<int>(head.size()));
    // 256 KiB of one chunk line with no end: over the 16 KiB header limit many times.
    const std::string filler(16 << 10, 'a');
    std::string answer;
    char buf[4096];
    for (int i = 0; i < 16 && answer.empty(); ++i) {
      if (SSL_write(client.ssl.get(), filler.data(), static_cast<int>(filler.size())) <= 0) break;
      pollfd p{client.fd.get(), POLLIN, 0};
      if (::poll(&p, 1, 0) > 0) {
        const int n = SSL_read(client.ssl.get(), buf, sizeof buf);
        if (n > 0) answer.assign(buf, static_cast<std::size_t>(n));
      }
    }
    if (answer.empty()) {
      const int n = SSL_read(client.ssl.get(), buf, sizeof buf);
      if (n > 0) answer.assign(buf, static_cast<std::size_t>(n));
    }
    CHECK(answer.starts_with("HTTP/1.1 431 "));
    CHECK(answer.find("headers_too_large") != std::string::npos);
  }
  REQUIRE(server.process().running());
}

TEST_CASE("a HEAD answer has no body, so the next answer on the connection reads right") {
  REQUIRE_CONTROL();
  ControlServer server;
  auto client = raw_connect(server, {});
  REQUIRE_MESSAGE(client.connected(), client.error);
  const std::string both = "HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + get("/healthz");
  REQUIRE(SSL_write(client.ssl.get(), both.data(), static_cast<int>(both.size())) == static_cast<int>(both.size()));
  std::string in;
  char buf[4096];
  while (!(in.ends_with("\r\n\r\nok") && in.find("HTTP/1.1 ", 1) != std::string::npos)) {
    const int n = SSL_read(client.ssl.get(), buf, sizeof buf);
    REQUIRE(n > 0);
    in.append(buf, static_cast<std::size_t>(n));
  }
  const auto first_end = in.find("\r\n\r\n");
  REQUIRE(first_end != std::string::npos);
  // The second answer starts right after the first one's headers.
  CHECK(in.compare(first_end + 4, 9, "HTTP/1.1 ") == 0);
  CHECK(in.substr(first_end + 4).starts_with("HTTP/1.1 200 "));
}

TEST_CASE("on SIGTERM an idle keep-alive connection is closed with a close_notify") {
  REQUIRE_CONTROL();
  ControlServer server;
  auto client = raw_connect(server, {});
  REQUIRE_MESSAGE(client.connected(), client.error);
  REQUIRE(round_trip(client, get("/healthz")).starts_with("HTTP/1.1 200 "));
  server.process().kill(SIGTERM);
  CHECK(wait_for_close(client, 10s) == "close_notify");
  const auto code = server.process().wait_exit(15s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}

}  // namespace cairn::test
