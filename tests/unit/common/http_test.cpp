// Both HttpClient backends (libcurl, dlopen()ed; the lean one on Beast + OpenSSL) against
// real servers on 127.0.0.1: the tests' own HTTP/1.1 server for the protocol, and OpenSSL's
// `openssl s_server` for TLS (chain and host name checks, the pinned CA fingerprint, client
// certificates). Every case runs on both, so they behave the same where the agent relies on it.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/http.hpp"
#include "tests/support/http_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn {
namespace {

using namespace std::chrono_literals;
using test::HttpServer;

struct Backend {
  std::string name;
  std::unique_ptr<HttpClient> (*make)(TlsOptions);
};
const Backend kBackends[] = {{"libcurl", make_http_client}, {"lean", make_lean_http_client}};

HttpServer::Response answer(int status, std::string body, std::vector<std::pair<std::string, std::string>> headers = {}) {
  HttpServer::Response r;
  r.status = status;
  r.body = std::move(body);
  r.headers = std::move(headers);
  return r;
}

HttpServer::Response silence() {
  HttpServer::Response r;
  r.never_answer = true;
  return r;
}

TlsOptions pinned_file(std::string ca_file, std::string cert = {}, std::string key = {}) {
  TlsOptions tls;
  tls.ca_file = std::move(ca_file);
  tls.client_cert_file = std::move(cert);
  tls.client_key_file = std::move(key);
  return tls;
}

TlsOptions pinned_fingerprint(std::string fingerprint) {
  TlsOptions tls;
  tls.ca_fingerprint_sha256 = std::move(fingerprint);
  return tls;
}

HttpRequest get(const std::string& url) {
  HttpRequest r;
  r.url = url;
  r.connect_timeout = 2s;
  r.total_timeout = 5s;
  return r;
}

TEST_CASE("http: status, lower-cased headers and body; one kept-alive connection for several calls") {
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    HttpServer server([](const HttpServer::Request& r) {
      return answer(r.method == "POST" ? 201 : 200, r.method + " " + r.target + " " + r.body, {{"X-Answer", "Yes"}});
    });
    auto client = backend.make({});
    for (int i = 0; i < 3; ++i) {
      auto resp = client->send(get(server.base_url() + "/a/b?c=" + std::to_string(i)));
      REQUIRE_MESSAGE(resp.has_value(), (resp ? "" : resp.error().message));
      CHECK(resp->status == 200);
      CHECK(resp->header("x-answer") == "Yes");
      CHECK(resp->body == "GET /a/b?c=" + std::to_string(i) + " ");
    }
    auto post = get(server.base_url() + "/p");
    post.method = "POST";
    post.body = R"({"k":1})";
    post.headers = {{"Content-Type", "application/json"}};
    auto resp = client->send(post);
    REQUIRE(resp.has_value());
    CHECK(resp->status == 201);
    CHECK(resp->body == R"(POST /p {"k":1})");
    CHECK(server.connections() == 1);
  }
}

TEST_CASE("http: an answer with Connection: close is followed by a new connection, transparently") {
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    HttpServer server([](const HttpServer::Request&) { return answer(200, "ok"); });
    auto client = backend.make({});
    auto first = get(server.base_url() + "/");
    first.headers = {{"Connection", "close"}};
    REQUIRE(client->send(first).has_value());
    auto second = client->send(get(server.base_url() + "/"));
    REQUIRE_MESSAGE(second.has_value(), (second ? "" : second.error().message));
    CHECK(second->body == "ok");
    CHECK(server.connections() == 2);
  }
}

TEST_CASE("http: too large an answer is Errc::data, a silent server Errc::unavailable within the timeout") {
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    HttpServer server([](const HttpServer::Request& r) {
      if (r.path == "/big") return answer(200, std::string(70000, 'x'));
      return silence();
    });
    auto client = backend.make({});
    auto big = get(server.base_url() + "/big");
    big.max_response_bytes = 65536;
    auto resp = client->send(big);
    REQUIRE_FALSE(resp.has_value());
    CHECK(resp.error().code == Errc::data);
    CHECK(resp.error().message.find("/big") != std::string::npos);

    auto silent = get(server.base_url() + "/silent");
    silent.total_timeout = 700ms;
    const auto start = std::chrono::steady_clock::now();
    resp = client->send(silent);
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(resp.has_value());
    CHECK(resp.error().code == Errc::unavailable);
    CHECK(took >= 600ms);
    CHECK(took < 3s);
  }
}

TEST_CASE("http: a scheme the request does not allow is refused before anything is sent") {
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    HttpServer server([](const HttpServer::Request&) { return answer(200, ""); });
    auto client = backend.make({});
    auto req = get(server.base_url() + "/");
    req.protocols = "https";
    auto resp = client->send(req);
    REQUIRE_FALSE(resp.has_value());
    CHECK(resp.error().code == Errc::config);
    CHECK(server.requests() == 0);
  }
}

TEST_CASE("http: the lean client refuses malformed URLs and header injection with a clear error") {
  auto client = make_lean_http_client({});
  for (const std::string url : {"127.0.0.1:80/x", "ftp://h/x", "http://user:pw@h/x", "http://h:99999/", "http://[::1/x",
                                "http://h/a b", "http:///x"}) {
    CAPTURE(url);
    auto resp = client->send(get(url));
    REQUIRE_FALSE(resp.has_value());
    CHECK(resp.error().code == Errc::config);
  }
  HttpServer server([](const HttpServer::Request&) { return answer(200, ""); });
  auto req = get(server.base_url() + "/");
  req.headers = {{"X-A", "1\r\nX-Injected: 1"}};
  auto resp = client->send(req);
  REQUIRE_FALSE(resp.has_value());
  CHECK(server.requests() == 0);
  auto stream = get(server.base_url() + "/");
  stream.body_sink = [](long, std::string_view) { return true; };
  CHECK_FALSE(client->send(stream).has_value());  // downloads belong to libcurl
}

// ---- TLS against `openssl s_server` ----------------------------------------------------------

class Pki {
 public:
  [[nodiscard]] std::filesystem::path at(const std::string& name) const { return dir_.path() / name; }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_.path(); }

  bool openssl(std::vector<std::string> args) const {
    args.insert(args.begin(), test::which("openssl"));
    const auto r = test::run_capture(args, dir_.path());
    if (r.exit_code != 0) MESSAGE("openssl " << args[1] << ": " << r.err);
    return r.exit_code == 0;
  }
  // A self-signed CA `name` (name.pem, name.key).
  bool make_ca(const std::string& name) const {
    return openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    at(name + ".key").string(), "-out", at(name + ".pem").string(), "-subj", "/CN=" + name, "-days", "2"});
  }
  // A leaf `name` signed by `ca`, with the subjectAltName given (none if empty).
  bool make_leaf(const std::string& name, const std::string& ca, const std::string& san) const {
    std::ofstream(at(name + ".ext")) << (san.empty() ? "basicConstraints=CA:FALSE\n" : "subjectAltName=" + san + "\n");
    return openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    at(name + ".key").string(), "-out", at(name + ".csr").string(), "-subj", "/CN=" + name}) &&
           openssl({"x509", "-req", "-in", at(name + ".csr").string(), "-CA", at(ca + ".pem").string(), "-CAkey",
                    at(ca + ".key").string(), "-CAcreateserial", "-days", "2", "-out", at(name + ".pem").string(),
                    "-extfile", at(name + ".ext").string()});
  }
  [[nodiscard]] std::string fingerprint(const std::string& name) const {
    auto pem = read_file(at(name + ".pem"), 1 << 16);
    REQUIRE(pem.has_value());
    auto cert = parse_cert_pem(*pem);
    REQUIRE(cert.has_value());
    return cert_info(cert->get()).fingerprint_sha256;
  }

 private:
  test::TempDir dir_;
};

// `openssl s_server -www` on 127.0.0.1 with the leaf `cert` (and the CA in its chain): answers
// each connection with a status page that names the client certificate, if any.
class TlsServer {
 public:
  TlsServer(const Pki& pki, const std::string& cert, bool want_client_cert) {
    std::vector<std::string> argv = {test::which("openssl"), "s_server", "-accept", "127.0.0.1:0", "-cert",
                                     pki.at(cert + ".pem").string(), "-key", pki.at(cert + ".key").string(),
                                     "-cert_chain", pki.at("ca.pem").string(), "-www"};
    if (want_client_cert) argv.insert(argv.end(), {"-Verify", "1", "-CAfile", pki.at("ca.pem").string()});
    log_ = pki.at(cert + ".s_server.log");
    auto p = test::Process::spawn(argv, {}, log_);
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    process_.emplace(std::move(*p));
    std::smatch m;
    const std::regex accept(R"(ACCEPT [^\n]*:([0-9]+))");
    REQUIRE_MESSAGE(test::wait_for([&] { const auto log = test::slurp(log_); return std::regex_search(log, m, accept); }, 10s),
                    test::slurp(log_));
    const auto log = test::slurp(log_);
    std::regex_search(log, m, accept);
    port_ = m[1].str();
  }
  [[nodiscard]] std::string url() const { return "https://127.0.0.1:" + port_ + "/"; }

 private:
  std::filesystem::path log_;
  std::optional<test::Process> process_;
  std::string port_;
};

TEST_CASE("tls: the server's chain and name are checked against the pinned CA file or fingerprint") {
  if (test::which("openssl").empty()) CAIRN_SKIP("the openssl command is not installed (Debian: openssl)");
  Pki pki;
  REQUIRE(pki.make_ca("ca"));
  REQUIRE(pki.make_ca("other-ca"));
  REQUIRE(pki.make_leaf("good", "ca", "IP:127.0.0.1,DNS:localhost"));
  REQUIRE(pki.make_leaf("misnamed", "ca", "DNS:other.test"));
  const TlsServer good(pki, "good", false);
  const TlsServer misnamed(pki, "misnamed", false);
  const std::string ca = pki.at("ca.pem").string();
  const std::string pin = pki.fingerprint("ca");
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    const auto send = [&](const TlsServer& server, TlsOptions tls) { return backend.make(std::move(tls))->send(get(server.url())); };
    auto resp = send(good, pinned_file(ca));
    REQUIRE_MESSAGE(resp.has_value(), (resp ? "" : resp.error().message));
    CHECK(resp->status == 200);
    resp = send(good, pinned_fingerprint(pin));
    REQUIRE_MESSAGE(resp.has_value(), (resp ? "" : resp.error().message));
    CHECK(resp->status == 200);

    const auto refused = [&](const Result<HttpResponse>& r, const char* why) {
      const std::string reason = why;
    CAPTURE(reason);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == Errc::refused);
    };
    refused(send(good, pinned_fingerprint(pki.fingerprint("good"))), "a pin that is not a CA of the chain");
    refused(send(good, pinned_fingerprint(pki.fingerprint("other-ca"))), "another CA's pin");
    refused(send(good, pinned_file(pki.at("other-ca.pem").string())), "another CA's file");
    refused(send(misnamed, pinned_file(ca)), "a certificate for another name, CA file");
    refused(send(misnamed, pinned_fingerprint(pin)), "a certificate for another name, pinned CA");
  }
}

TEST_CASE("tls: client certificates; the lean client takes a rotated certificate at its next call") {
  if (test::which("openssl").empty()) CAIRN_SKIP("the openssl command is not installed (Debian: openssl)");
  Pki pki;
  REQUIRE(pki.make_ca("ca"));
  REQUIRE(pki.make_leaf("server", "ca", "IP:127.0.0.1"));
  REQUIRE(pki.make_leaf("node-one", "ca", ""));
  REQUIRE(pki.make_leaf("node-two", "ca", ""));
  const TlsServer server(pki, "server", true);
  const auto cert = pki.at("client.pem");
  const auto key = pki.at("client.key");
  const auto use = [&](const std::string& name) {
    std::filesystem::copy_file(pki.at(name + ".pem"), cert, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(pki.at(name + ".key"), key, std::filesystem::copy_options::overwrite_existing);
  };
  for (const auto& backend : kBackends) {
    CAPTURE(backend.name);
    auto anonymous = backend.make(pinned_file(pki.at("ca.pem").string()))->send(get(server.url()));
    CHECK_FALSE((anonymous.has_value() && anonymous->status == 200));

    use("node-one");
    auto client = backend.make(pinned_file(pki.at("ca.pem").string(), cert.string(), key.string()));
    auto resp = client->send(get(server.url()));
    REQUIRE_MESSAGE(resp.has_value(), (resp ? "" : resp.error().message));
    CHECK(resp->body.find("CN=node-one") != std::string::npos);
    if (std::string(backend.name) != "lean") continue;
    std::this_thread::sleep_for(20ms);  // a new mtime, even on a coarse clock
    use("node-two");
    resp = client->send(get(server.url()));
    REQUIRE_MESSAGE(resp.has_value(), (resp ? "" : resp.error().message));
    CHECK(resp->body.find("CN=node-two") != std::string::npos);
  }
}

}  // namespace
}  // namespace cairn
