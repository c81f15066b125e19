// The control service of the VM tests: a real cairn-control on 127.0.0.1 whose server
// certificate names the guest's view of it (10.0.2.100, reached through a guestfwd).
#pragma once

#include <signal.h>

#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "common/json.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test::vm {

using namespace std::chrono_literals;

// The guest's address for the control service (guestfwd to 127.0.0.1:<port>).
inline constexpr const char* kControlGuestIp = "10.0.2.100";
inline constexpr int kControlGuestPort = 8443;

inline std::string control_binary() {
  const char* p = std::getenv("CAIRN_CONTROL");
  return p != nullptr ? p : "";
}

inline std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// cairn-control with a server certificate for the guest's view of it (IP 10.0.2.100).
class VmControl {
 public:
  VmControl() {
    state_ = dir_.path() / "state";
    const auto init = run_capture({control_binary(), "init", "--state", state_.string(), "--san-ip", kControlGuestIp},
                                  dir_.path());
    REQUIRE_MESSAGE(init.exit_code == 0, init.err);
    const auto at = init.out.find("CA SHA-256: ");
    REQUIRE(at != std::string::npos);
    fingerprint_ = init.out.substr(at + 12, init.out.find('\n', at) - at - 12);
    const auto port_file = dir_.path() / "port";
    auto p = Process::spawn({control_binary(), "serve", "--state", state_.string(), "--listen", "127.0.0.1:0",
                             "--port-file", port_file.string(), "--threads", "2", "--heartbeat-interval", "1s"},
                            {}, dir_.path() / "serve.log");
    REQUIRE_MESSAGE(p.has_value(), (p ? "" : p.error().message));
    process_.emplace(std::move(*p));
    REQUIRE_MESSAGE(wait_for([&] { return !slurp(port_file).empty() || !process_->running(); }, 20s),
                    slurp(dir_.path() / "serve.log"));
    REQUIRE_MESSAGE(process_->running(), slurp(dir_.path() / "serve.log"));
    port_ = std::stoi(slurp(port_file));
  }
  ~VmControl() {
    if (process_ && process_->running()) {
      process_->kill(SIGTERM);
      process_->wait_exit(10s);
    }
  }
  VmControl(const VmControl&) = delete;
  VmControl& operator=(const VmControl&) = delete;

  RunResult cli(std::vector<std::string> args) const {
    std::vector<std::string> argv = {control_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--state", state_.string(), "--server", "https://127.0.0.1:" + std::to_string(port_)});
    return run_capture(argv, dir_.path());
  }
  // For commands with an argv after `--` (task submit --kind exec ... -- ARGV): the admin
  // options go before it.
  RunResult cli(std::vector<std::string> args, const std::vector<std::string>& tail) const {
    args.insert(args.end(), {"--state", state_.string(), "--server", "https://127.0.0.1:" + std::to_string(port_), "--"});
    args.insert(args.end(), tail.begin(), tail.end());
    std::vector<std::string> argv = {control_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_capture(argv, dir_.path());
  }
  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] const std::string& fingerprint() const { return fingerprint_; }
  [[nodiscard]] std::filesystem::path log() const { return dir_.path() / "serve.log"; }

 private:
  TempDir dir_;
  std::filesystem::path state_;
  std::string fingerprint_;
  std::optional<Process> process_;
  int port_ = 0;
};

// Submits a task to `node` (`task submit ARGS --node NODE [-- ARGV]`) and waits until it is
// final (succeeded, failed, dead), or `ended()` says the VM is gone; the task as `task show
// --json` gives it.
inline Json run_task(const VmControl& control, const std::string& node, std::vector<std::string> args,
                     const std::vector<std::string>& argv = {}, std::chrono::milliseconds timeout = 180s,
                     const std::function<bool()>& ended = [] { return false; }) {
  args.insert(args.begin(), {"task", "submit"});
  args.insert(args.end(), {"--node", node, "--json"});
  const auto submit = argv.empty() ? control.cli(args) : control.cli(args, argv);
  REQUIRE_MESSAGE(submit.exit_code == 0, std::string(submit.out + submit.err));
  const auto id = parse_json(submit.out, "task submit").value_or(Json(nullptr)).value("id", "");
  REQUIRE(!id.empty());
  Json task;
  const bool done = wait_for(
      [&] {
        const auto r = control.cli({"task", "show", id, "--json"});
        task = parse_json(r.out, "task show").value_or(Json(nullptr));
        const auto st = task.is_object() ? task.value("state", "") : "";
        return st == "succeeded" || st == "failed" || st == "dead" || ended();
      },
      timeout, 500ms);
  INFO("task: " << dump_json(task, 2));
  REQUIRE(done);
  return task;
}

inline std::string node_state(const VmControl& control, const std::string& id) {
  const auto r = control.cli({"node", "show", id, "--json"});
  if (r.exit_code != 0) return "";
  const auto j = parse_json(r.out, "node show").value_or(Json(nullptr));
  return j.is_object() ? j.value("state", "") : "";
}


}  // namespace cairn::test::vm
