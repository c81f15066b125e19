// The HTTPS server of cairn-control against real clients: the real `cairn-control init` and
// `serve` on 127.0.0.1 port 0, libcurl (common/http.hpp) and raw sockets for the clients
// that misbehave on purpose.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <fcntl.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
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
#include "tests/integration/control/server_helpers.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

TEST_CASE("healthz answers ok and /metrics exposes the counters of the issue") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  auto health = send(server.anonymous(), "GET", server.url("/healthz"));
  REQUIRE(health);
  CHECK(health->status == 200);
  CHECK(health->body == "ok");

  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  CHECK(metrics->header("content-type").value_or("").starts_with("text/plain"));
  const auto& text = metrics->body;
  CHECK(text.find("cairn_http_requests_total{endpoint=\"healthz\",status=\"200\"} 1") != std::string::npos);
  CHECK(text.find("cairn_http_request_duration_seconds_bucket{endpoint=\"healthz\",le=\"0.001\"}") !=
        std::string::npos);
  CHECK(text.find("cairn_http_request_duration_seconds_count{endpoint=\"healthz\"} 1") != std::string::npos);
  CHECK(metric_value(text, "cairn_nodes{state=\"ready\"}") == 0.0);
  CHECK(metric_value(text, "cairn_nodes{state=\"unreachable\"}") == 0.0);
  CHECK(metric_value(text, "cairn_nodes{state=\"revoked\"}") == 0.0);
  CHECK(metric_value(text, "cairn_enrollments_total") == 0.0);
  CHECK(metric_value(text, "cairn_tls_handshake_failures_total").has_value());
  CHECK(metric_value(text, "cairn_connections_open").value_or(0) >= 1.0);
}

TEST_CASE("a client that trusts another CA refuses the server") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  const auto pki = make_foreign_pki(server.scratch(), "whoever");
  auto response = send(tls_with(pki.ca.string()), "GET", server.url("/healthz"));
  REQUIRE_FALSE(response.has_value());
  CHECK(response.error().code == Errc::refused);
}

TEST_CASE("a client certificate from another CA is refused and counted as a TLS failure") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  const auto pki = make_foreign_pki(server.scratch(), random_uuid().str());
  TlsOptions tls = server.anonymous();
  tls.client_cert_file = pki.client.cert.string();
  tls.client_key_file = pki.client.key.string();
  for (const char* path : {"/v1/heartbeat", "/v1/admin/tokens"}) {
    CAPTURE(path);
    auto response = send(tls, "POST", server.url(path), "{}");
    if (response) {
      CHECK(response->status == 401);
      CHECK(error_code_of(*response) == "client_cert_untrusted");
    }
  }
  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metric_value(metrics->body, "cairn_tls_handshake_failures_total").value_or(0) >= 2.0);
}

TEST_CASE("node endpoints refuse a missing client certificate with 401") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  for (const char* path : {"/v1/heartbeat", "/v1/certificates/rotate"}) {
    CAPTURE(path);
    auto response = send(server.anonymous(), "POST", server.url(path), heartbeat_body());
    REQUIRE(response);
    CHECK(response->status == 401);
    CHECK(error_code_of(*response) == "client_cert_required");
  }
  auto admin = send(server.anonymous(), "GET", server.url("/v1/admin/nodes"));
  REQUIRE(admin);
  CHECK(admin->status == 401);
}

TEST_CASE("an enrolled node heartbeats, cannot use the admin API, and is refused once revoked") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  const auto node = enroll_node(server);

  // One client: keep-alive, so the revocation below hits an established connection.
  auto client = make_http_client(as_node(server, node));
  HttpRequest hb;
  hb.method = "POST";
  hb.url = server.url("/v1/heartbeat");
  hb.body = heartbeat_body();
  auto first = client->send(hb);
  REQUIRE(first);
  REQUIRE_MESSAGE(first->status == 200, first->body);
  auto answer = protocol::decode_heartbeat_response(first->body);
  REQUIRE(answer);
  CHECK(answer->next_interval_s > 0);
  CHECK_FALSE(answer->server_time.empty());

  auto admin = send(as_node(server, node), "GET", server.url("/v1/admin/nodes"));
  REQUIRE(admin);
  CHECK(admin->status == 403);
  CHECK(error_code_of(*admin) == "not_admin");

  const auto list = server.cli({"node", "list"});
  REQUIRE_MESSAGE(list.exit_code == 0, list.err);
  CHECK(list.out.find(node.id) != std::string::npos);
  CHECK(list.out.find("STATE") != std::string::npos);

  const auto show = server.cli({"node", "show", node.id, "--json"});
  REQUIRE_MESSAGE(show.exit_code == 0, show.err);
  CHECK(show.out.find(node.id) != std::string::npos);

  const auto revoke = server.cli({"node", "revoke", node.id});
  REQUIRE_MESSAGE(revoke.exit_code == 0, revoke.err);
  auto after = client->send(hb);
  REQUIRE(after);
  CHECK((after->status == 401 || after->status == 403));

  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metric_value(metrics->body, "cairn_enrollments_total") == 1.0);
  CHECK(metric_value(metrics->body, "cairn_nodes{state=\"revoked\"}") == 1.0);
  CHECK(metrics->body.find("cairn_http_requests_total{endpoint=\"heartbeat\",status=\"200\"} 1") !=
        std::string::npos);
}

TEST_CASE("TLS 1.2 and 1.3 clients both heartbeat, and pipelined requests are answered in order") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  const auto node = enroll_node(server);
  const std::string one = heartbeat_request(server);
  const std::string three = one + one + one;  // one write: the server parses them one by one

  const auto v13 = raw_exchange(server, node, 0, three, 3);
  CHECK(v13.version == "TLSv1.3");
  REQUIRE(v13.answers.size() == 3);
  for (const auto& answer : v13.answers) CHECK(answer.starts_with("HTTP/1.1 200 OK\r\n"));

  const auto v12 = raw_exchange(server, node, TLS1_2_VERSION, three, 3);
  CHECK(v12.version == "TLSv1.2");
  REQUIRE(v12.answers.size() == 3);
  for (const auto& answer : v12.answers) CHECK(answer.starts_with("HTTP/1.1 200 OK\r\n"));

  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metrics->body.find("cairn_http_requests_total{endpoint=\"heartbeat\",status=\"200\"} 6") !=
        std::string::npos);
}

TEST_CASE("a body over the limit gets 413 with a JSON error") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server({"--max-body", "64KiB"});
  const std::string big(200 * 1024, 'x');
  auto response = send(server.anonymous(), "POST", server.url("/v1/enroll"), big,
                       {{"Authorization", "Bearer abc"}, {"Content-Type", "application/json"}});
  REQUIRE_MESSAGE(response.has_value(), (response ? "" : response.error().message));
  CHECK(response->status == 413);
  CHECK(error_code_of(*response) == "body_too_large");
  // The server is still fine afterwards.
  auto health = send(server.anonymous(), "GET", server.url("/healthz"));
  REQUIRE(health);
  CHECK(health->status == 200);
}

TEST_CASE("malformed JSON gets 400 naming the decode error") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  auto response = send(server.anonymous(), "POST", server.url("/v1/enroll"), "{\"identity\": [1, 2",
                       {{"Authorization", "Bearer abc"}, {"Content-Type", "application/json"}});
  REQUIRE(response);
  CHECK(response->status == 400);
  auto error = protocol::decode_error_body(response->body);
  REQUIRE(error);
  CHECK(error->code == "bad_request");
  CHECK_FALSE(error->message.empty());
  CHECK_FALSE(error->hint.empty());

  auto admin = send(server.admin(), "POST", server.url("/v1/admin/tokens"), "not json");
  REQUIRE(admin);
  CHECK(admin->status == 400);
}

TEST_CASE("unknown paths get 404 and wrong methods 405, both with JSON errors") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  auto missing = send(server.anonymous(), "GET", server.url("/v1/nope"));
  REQUIRE(missing);
  CHECK(missing->status == 404);
  CHECK(error_code_of(*missing) == "not_found");
  auto wrong = send(server.anonymous(), "GET", server.url("/v1/enroll"));
  REQUIRE(wrong);
  CHECK(wrong->status == 405);
  CHECK(error_code_of(*wrong) == "method_not_allowed");
  auto no_token = send(server.anonymous(), "POST", server.url("/v1/enroll"), "{}");
  REQUIRE(no_token);
  CHECK(no_token->status == 401);
  CHECK(error_code_of(*no_token) == "token_missing");
}

TEST_CASE("a slow client sending one byte a second is cut by the header timeout") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  constexpr auto kHeaderTimeout = 2s;
  ControlServer server({"--header-timeout", "2s"});

  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  REQUIRE(ctx);
  REQUIRE(SSL_CTX_load_verify_locations(ctx.get(), (server.state() / "ca.crt").c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  UniqueFd fd = connect_tcp(server.port());
  SslPtr ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd.get());
  REQUIRE(SSL_connect(ssl.get()) == 1);
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);

  const std::string request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: a-very-slow-client\r\n\r\n";
  const auto start = SteadyClock::now();
  std::size_t sent = 0;
  bool cut = false;
  while (sent < request.size() && !cut) {
    if (SSL_write(ssl.get(), request.data() + sent, 1) != 1) {
      cut = true;
      break;
    }
    ++sent;
    // One byte a second: the wait for the server's reaction is the pacing.
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 1000) > 0) {
      char buf[256];
      const int r = SSL_read(ssl.get(), buf, sizeof buf);
      if (r <= 0) {
        const int err = SSL_get_error(ssl.get(), r);
        cut = err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
      }
    }
  }
  const auto elapsed = SteadyClock::now() - start;
  CHECK(cut);
  CHECK(sent < request.size());
  // Cut by the header timeout (2 s), with generous slack for a loaded machine.
  CHECK(elapsed < kHeaderTimeout + 4s);
}

TEST_CASE("connections that never speak are closed after the handshake timeout and the cap holds") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  constexpr int kCap = 20;
  constexpr int kExtra = 15;
  ControlServer server({"--handshake-timeout", "3s", "--max-connections", std::to_string(kCap)});

  const auto start = SteadyClock::now();
  std::vector<UniqueFd> silent;
  for (int i = 0; i < kCap + kExtra; ++i) silent.push_back(connect_tcp(server.port()));

  // Over the cap: closed at once (well before the handshake timeout).
  int closed_early = 0;
  std::vector<bool> closed(silent.size(), false);
  for (std::size_t i = 0; i < silent.size(); ++i) {
    if (closed_within(silent[i].get(), 10ms)) {
      closed[i] = true;
      ++closed_early;
    }
  }
  // Let the accept loop catch up on a busy machine before counting the early ones.
  wait_for([&] {
    for (std::size_t i = 0; i < silent.size(); ++i) {
      if (!closed[i] && closed_within(silent[i].get(), 1ms)) {
        closed[i] = true;
        ++closed_early;
      }
    }
    return closed_early >= kExtra;
  }, 2s);
  CHECK(closed_early >= kExtra);
  CHECK(SteadyClock::now() - start < 3s);

  // The rest: closed by the handshake timeout (3 s), with slack.
  for (std::size_t i = 0; i < silent.size(); ++i) {
    if (!closed[i]) CHECK(closed_within(silent[i].get(), 8s));
  }
  CHECK(SteadyClock::now() - start < 10s);
  // Once they are gone, the server answers again.
  auto health = send(server.anonymous(), "GET", server.url("/healthz"));
  REQUIRE(health);
  CHECK(health->status == 200);
  auto metrics = send(server.anonymous(), "GET", server.url("/metrics"));
  REQUIRE(metrics);
  CHECK(metric_value(metrics->body, "cairn_connections_refused_total").value_or(0) >= kExtra);
}

TEST_CASE("admin tokens are created, listed and revoked through the CLI") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  const auto created = server.cli({"token", "create", "--ttl", "2h", "--uses", "3", "--labels", "role=web,zone=a",
                                   "--json"});
  REQUIRE_MESSAGE(created.exit_code == 0, created.err);
  auto token = parse_json(created.out, "token create --json");
  REQUIRE(token);
  const std::string id = token->value("id", "");
  REQUIRE_FALSE(id.empty());
  CHECK_FALSE(token->value("token", "").empty());

  const auto listed = server.cli({"token", "list"});
  REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
  CHECK(listed.out.find(id) != std::string::npos);
  CHECK(listed.out.find("role=web") != std::string::npos);
  // The secret itself is never listed.
  CHECK(listed.out.find(token->value("token", "?")) == std::string::npos);

  const auto revoked = server.cli({"token", "revoke", id});
  REQUIRE_MESSAGE(revoked.exit_code == 0, revoked.err);
  const auto after = server.cli({"token", "list", "--json"});
  REQUIRE(after.exit_code == 0);
  auto json = parse_json(after.out, "token list --json");
  REQUIRE(json);
  bool found = false;
  for (const auto& t : (*json)["tokens"]) {
    if (t.value("id", "") == id) {
      found = true;
      CHECK(t.value("revoked", false));
    }
  }
  CHECK(found);

  const auto unknown = server.cli({"token", "revoke", "no-such-token"});
  CHECK(unknown.exit_code != 0);
  CHECK_FALSE(unknown.err.empty());
}

TEST_CASE("the CLI refuses to talk to a server when no admin credential is given") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  TempDir dir;
  const auto r = run_capture({control_binary(), "token", "list", "--server", "https://127.0.0.1:1"}, dir.path());
  CHECK(r.exit_code == 64);
  CHECK(r.err.find("--state") != std::string::npos);
}

TEST_CASE("serve listens on IPv6 loopback") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  UniqueFd probe(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_loopback;
  if (!probe.valid() || ::bind(probe.get(), reinterpret_cast<sockaddr*>(&a6), sizeof a6) != 0) {
    CAIRN_SKIP("no IPv6 loopback here");
  }
  probe.reset();
  TempDir dir;
  const auto state = dir.path() / "state";
  REQUIRE(run_capture({control_binary(), "init", "--state", state.string()}, dir.path()).exit_code == 0);
  auto p = Process::spawn({control_binary(), "serve", "--state", state.string(), "--listen", "[::1]:0", "--port-file",
                           (dir.path() / "port").string()},
                          {}, dir.path() / "serve.log");
  REQUIRE(p);
  REQUIRE(wait_for([&] { return !slurp(dir.path() / "port").empty(); }, 20s));
  const auto port = std::stoi(slurp(dir.path() / "port"));
  // The port file is written just before the line is logged: wait for it, do not race it.
  CHECK(wait_for([&] {
    return slurp(dir.path() / "serve.log").find("event=control.listening addr=[::1]:") != std::string::npos;
  }, 10s));
  auto health = send(tls_with((state / "ca.crt").string()), "GET",
                     "https://[::1]:" + std::to_string(port) + "/healthz");
  REQUIRE_MESSAGE(health.has_value(), (health ? "" : health.error().message));
  CHECK(health->status == 200);
}

TEST_CASE("serve exits 0 on SIGTERM") {
  if (control_binary().empty()) CAIRN_SKIP("CAIRN_CONTROL not set (run through meson test)");
  ControlServer server;
  server.process().kill(SIGTERM);
  const auto code = server.process().wait_exit(15s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(slurp(server.log_path()).find("event=control.stopped") != std::string::npos);
}

}  // namespace cairn::test
