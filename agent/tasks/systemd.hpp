// What the task kinds ask of systemd (reload, start, stop, state, reboot), behind one small
// interface: systemd_bus.cpp speaks sd-bus (the only file that does); tests use a fake, and a
// real systemd only where it runs as PID 1.
#pragma once

#include <memory>
#include <string>

#include "common/result.hpp"

namespace cairn::agent::tasks {

class Systemd {
 public:
  virtual ~Systemd() = default;
  virtual Status daemon_reload() = 0;                            // Manager.Reload
  virtual Status start_unit(const std::string& unit) = 0;        // Manager.StartUnit(unit, "replace")
  virtual Status stop_unit(const std::string& unit) = 0;         // Manager.StopUnit(unit, "replace")
  // Unit.ActiveState: "active", "activating", "failed", "inactive", ...; "inactive" for a
  // unit systemd has not loaded.
  virtual Result<std::string> active_state(const std::string& unit) = 0;
  virtual Status reboot() = 0;                                   // Manager.Reboot (a clean one)
};

// systemd's private socket (root) or the system bus; Errc::unavailable when neither answers
// (not a systemd host).
Result<std::unique_ptr<Systemd>> connect_systemd();

}  // namespace cairn::agent::tasks
