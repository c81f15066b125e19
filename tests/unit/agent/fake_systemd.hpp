// A fake of the sd-bus boundary (agent/tasks/systemd.hpp): records every call in order and
// keeps unit states the way systemd would report them.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/tasks/systemd.hpp"

namespace cairn::test {

struct FakeSystemdState {
  std::mutex m;
  std::vector<std::string> calls;              // "reload", "start cairn-web.service", ...
  std::map<std::string, std::string> states;   // unit -> ActiveState
  std::string state_after_start = "active";
  bool reachable = true;
};

class FakeSystemd final : public agent::tasks::Systemd {
 public:
  explicit FakeSystemd(std::shared_ptr<FakeSystemdState> s) : s_(std::move(s)) {}
  Status daemon_reload() override { return record("reload"); }
  Status start_unit(const std::string& unit) override {
    std::lock_guard l(s_->m);
    s_->calls.push_back("start " + unit);
    s_->states[unit] = s_->state_after_start;
    return {};
  }
  Status stop_unit(const std::string& unit) override {
    std::lock_guard l(s_->m);
    s_->calls.push_back("stop " + unit);
    s_->states[unit] = "inactive";
    return {};
  }
  Result<std::string> active_state(const std::string& unit) override {
    std::lock_guard l(s_->m);
    auto it = s_->states.find(unit);
    return it == s_->states.end() ? std::string("inactive") : it->second;
  }
  Status reboot() override { return record("reboot"); }

  // The factory KindSettings::systemd takes.
  static auto factory(std::shared_ptr<FakeSystemdState> s) {
    return [s]() -> Result<std::unique_ptr<agent::tasks::Systemd>> {
      if (!s->reachable) return fail(Errc::unavailable, "connect to systemd: /run/systemd/private: No such file or directory; the system bus: No such file or directory");
      return std::unique_ptr<agent::tasks::Systemd>(std::make_unique<FakeSystemd>(s));
    };
  }

 private:
  Status record(const std::string& call) {
    std::lock_guard l(s_->m);
    s_->calls.push_back(call);
    return {};
  }
  std::shared_ptr<FakeSystemdState> s_;
};

}  // namespace cairn::test
