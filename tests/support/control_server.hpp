// A real cairn-control for integration tests: `init` into a temp state dir, then `serve`
// on 127.0.0.1 port 0, the binary taken from $CAIRN_CONTROL (set by meson).
#pragma once

#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/http.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

using namespace std::chrono_literals;

inline TlsOptions tls_with(std::string ca, std::string cert = {}, std::string key = {}) {
  TlsOptions tls;
  tls.ca_file = std::move(ca);
  tls.client_cert_file = std::move(cert);
  tls.client_key_file = std::move(key);
  return tls;
}

inline std::string control_binary() {
  const char* path = std::getenv("CAIRN_CONTROL");
  return path != nullptr ? path : "";
}

// A state dir made by `cairn-control init` and a `serve` on an ephemeral port.
class ControlServer {
 public:
  explicit ControlServer(std::vector<std::string> extra_flags = {}) {
    state_ = dir_.path() / "state";
    extra_flags_ = std::move(extra_flags);
    const auto init = run_capture({control_binary(), "init", "--state", state_.string()}, dir_.path());
    REQUIRE_MESSAGE(init.exit_code == 0, init.err);
    start();
  }

  // Starts serve on the state dir: first on an ephemeral port, then (after a stop or a
  // kill -9) on the same port again, so agents find it where they left it.
  void start() {
    const auto port_file = dir_.path() / "port";
    std::filesystem::remove(port_file);
    std::vector<std::string> argv = {control_binary(), "serve", "--state", state_.string(),
                                     "--listen", "127.0.0.1:" + std::to_string(port_), "--port-file", port_file.string(),
                                     "--threads", "2"};
    argv.insert(argv.end(), extra_flags_.begin(), extra_flags_.end());
    auto p = Process::spawn(argv, {}, log_path());
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    process_.emplace(std::move(*p));
    const bool up = wait_for([&] { return !slurp(port_file).empty() || !process_->running(); }, 20s);
    REQUIRE_MESSAGE(up, "serve did not write its port file; log:\n" << slurp(log_path()));
    REQUIRE_MESSAGE(process_->running(), "serve exited; log:\n" << slurp(log_path()));
    port_ = std::stoi(slurp(port_file));
    REQUIRE(port_ > 0);
  }
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  ~ControlServer() { stop(SIGTERM); }

  // Stops serve with `sig` (SIGKILL for a crash) and reaps it.
  void stop(int sig) {
    if (process_ && process_->running()) {
      process_->kill(sig);
      process_->wait_exit(10s);
    }
  }

  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] std::string url(std::string_view path = "") const {
    return "https://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  [[nodiscard]] std::filesystem::path state() const { return state_; }
  [[nodiscard]] std::filesystem::path scratch() const { return dir_.path(); }
  [[nodiscard]] std::filesystem::path log_path() const { return dir_.path() / "serve.log"; }
  Process& process() { return *process_; }

  [[nodiscard]] TlsOptions anonymous() const { return tls_with((state_ / "ca.crt").string()); }
  [[nodiscard]] TlsOptions admin() const {
    return tls_with((state_ / "ca.crt").string(), (state_ / "admin.crt").string(),
                    (state_ / "admin.key").string());
  }

  // The CLI against this server.
  RunResult cli(std::vector<std::string> args) const {
    std::vector<std::string> argv = {control_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--state", state_.string(), "--server", url()});
    return run_capture(argv, dir_.path());
  }

 private:
  TempDir dir_;
  std::filesystem::path state_;
  std::vector<std::string> extra_flags_;
  std::optional<Process> process_;
  int port_ = 0;
};

}  // namespace cairn::test
