// The real `docker-registry` (distribution 2.8, Debian) on a free 127.0.0.1 port, with its
// storage and config file in a temp dir; a forwarding proxy in front of it (tests/support
// HttpServer) whose hooks inject failures: 500s, truncated or altered blobs, a token realm.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/http.hpp"
#include "tests/support/http_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

class RegistryProcess {
 public:
  // Empty error(): started and answering /v2/. Otherwise error() says why (missing program).
  RegistryProcess() {
    const std::string program = which("docker-registry");
    if (program.empty()) {
      error_ = "docker-registry is not installed; run tools/install-deps";
      return;
    }
    port_ = free_loopback_port();
    const auto config = dir_.path() / "config.yml";
    std::ofstream(config) << "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                          << (dir_.path() / "data").string()
                          << "\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:" << port_ << "\n";
    auto p = Process::spawn({program, "serve", config.string()}, {}, dir_.path() / "registry.log");
    if (!p) {
      error_ = "docker-registry: " + p.error().message;
      return;
    }
    process_ = std::make_unique<Process>(std::move(*p));
    auto http = make_http_client();
    const bool up = wait_for(
        [&] {
          HttpRequest req;
          req.url = base_url() + "/v2/";
          req.total_timeout = std::chrono::milliseconds(500);
          auto r = http->send(req);
          return r && r->status == 200;
        },
        std::chrono::seconds(20), std::chrono::milliseconds(50));
    if (!up) error_ = "docker-registry did not answer on port " + std::to_string(port_) + ": " + slurp(dir_.path() / "registry.log");
  }
  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] std::string base_url() const { return "http://" + host(); }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_.path(); }

 private:
  TempDir dir_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
  std::string error_;
};

// Forwards every request to the registry, rewriting Location headers back to itself.
// `before` may answer instead of the registry; `after` may change the registry's answer.
class RegistryProxy {
 public:
  using Hook = std::function<std::optional<HttpServer::Response>(const HttpServer::Request&)>;
  using AfterHook = std::function<void(const HttpServer::Request&, HttpServer::Response&)>;

  explicit RegistryProxy(std::string upstream)
      : upstream_(std::move(upstream)), server_([this](const HttpServer::Request& r) { return handle(r); }) {}

  Hook before;
  AfterHook after;
  std::atomic<bool> forward_range{true};  // false: act as a server that ignores Range (200, whole body)
  [[nodiscard]] std::string host() const { return "127.0.0.1:" + std::to_string(server_.port()); }
  [[nodiscard]] std::size_t requests() const { return server_.requests(); }

 private:
  HttpServer::Response handle(const HttpServer::Request& r) {
    if (before) {
      if (auto answer = before(r)) return *answer;
    }
    HttpRequest req;
    req.method = r.method;
    req.url = upstream_ + r.target;
    req.body = r.body;
    req.max_response_bytes = 64 << 20;
    for (const std::string h : {"content-type", "content-range", "range", "accept"}) {
      if (h == "range" && !forward_range) continue;
      if (r.has_header(h)) req.headers.emplace_back(h, r.header(h));
    }
    HttpServer::Response out;
    auto answer = make_http_client()->send(req);
    if (!answer) {
      out.status = 502;
      return out;
    }
    out.status = static_cast<int>(answer->status);
    out.body = answer->body;
    const std::string self = "http://" + host();
    for (const auto& [k, v] : answer->headers) {
      if (k == "location") {
        std::string loc = v;
        if (loc.starts_with(upstream_)) loc = self + loc.substr(upstream_.size());
        out.headers.emplace_back("Location", loc);
      } else if (k == "docker-content-digest" || k == "content-type" || k == "content-range" || k == "range" ||
                 k == "docker-upload-uuid" || k == "oci-subject") {
        out.headers.emplace_back(k, v);
      }
    }
    if (after) after(r, out);
    return out;
  }

  std::string upstream_;
  HttpServer server_;
};

}  // namespace cairn::test
