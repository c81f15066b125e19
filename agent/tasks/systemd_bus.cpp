// Systemd over sd-bus (libsystemd): org.freedesktop.systemd1.Manager on the system bus
// (https://www.freedesktop.org/wiki/Software/systemd/dbus/).
#include <systemd/sd-bus.h>

#include <cstdlib>
#include <cstring>

#include "agent/tasks/systemd.hpp"

namespace cairn::agent::tasks {
namespace {

constexpr const char* kDest = "org.freedesktop.systemd1";
constexpr const char* kPath = "/org/freedesktop/systemd1";
constexpr const char* kManager = "org.freedesktop.systemd1.Manager";

struct BusDeleter {
  void operator()(sd_bus* b) const { sd_bus_flush_close_unref(b); }
};
struct MessageDeleter {
  void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
using BusPtr = std::unique_ptr<sd_bus, BusDeleter>;
using MessagePtr = std::unique_ptr<sd_bus_message, MessageDeleter>;

// One owner of an sd_bus_error.
struct BusError {
  sd_bus_error e = SD_BUS_ERROR_NULL;
  ~BusError() { sd_bus_error_free(&e); }
  [[nodiscard]] std::string text(int r) const {
    return e.message ? std::string(e.message) : std::string(std::strerror(-r));
  }
};

class BusSystemd final : public Systemd {
 public:
  explicit BusSystemd(BusPtr bus) : bus_(std::move(bus)) {}

  Status daemon_reload() override { return call("Reload", nullptr); }
  Status start_unit(const std::string& unit) override { return call("StartUnit", unit.c_str()); }
  Status stop_unit(const std::string& unit) override { return call("StopUnit", unit.c_str()); }
  Status reboot() override { return call("Reboot", nullptr); }

  Result<std::string> active_state(const std::string& unit) override {
    BusError err;
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus_.get(), kDest, kPath, kManager, "GetUnit", &err.e, &reply, "s", unit.c_str());
    MessagePtr owned(reply);
    if (r < 0) {
      if (sd_bus_error_has_name(&err.e, "org.freedesktop.systemd1.NoSuchUnit")) return std::string("inactive");
      return fail(Errc::unavailable, "systemd GetUnit " + unit + ": " + err.text(r));
    }
    const char* path = nullptr;
    r = sd_bus_message_read(reply, "o", &path);
    if (r < 0 || !path) return fail(Errc::internal, "systemd GetUnit " + unit + ": unreadable reply");
    char* state = nullptr;
    BusError perr;
    r = sd_bus_get_property_string(bus_.get(), kDest, path, "org.freedesktop.systemd1.Unit", "ActiveState", &perr.e,
                                   &state);
    if (r < 0) return fail(Errc::unavailable, "systemd ActiveState of " + unit + ": " + perr.text(r));
    std::string out(state);
    free(state);  // NOLINT: sd-bus allocates it with malloc
    return out;
  }

 private:
  // Manager.METHOD() or Manager.METHOD(unit, "replace").
  Status call(const char* method, const char* unit) {
    BusError err;
    sd_bus_message* reply = nullptr;
    const int r = unit ? sd_bus_call_method(bus_.get(), kDest, kPath, kManager, method, &err.e, &reply, "ss", unit, "replace")
                       : sd_bus_call_method(bus_.get(), kDest, kPath, kManager, method, &err.e, &reply, "");
    MessagePtr owned(reply);
    if (r < 0) {
      return fail(Errc::unavailable, std::string("systemd ") + method + (unit ? std::string(" ") + unit : "") + ": " +
                                         err.text(r));
    }
    return {};
  }

  BusPtr bus_;
};

}  // namespace

Result<std::unique_ptr<Systemd>> connect_systemd() {
  sd_bus* bus = nullptr;
  const int r = sd_bus_open_system(&bus);
  if (r < 0) {
    return fail(Errc::unavailable, std::string("connect to the system bus: ") + std::strerror(-r),
                "service.install, service.remove and reboot need systemd as PID 1");
  }
  return std::unique_ptr<Systemd>(std::make_unique<BusSystemd>(BusPtr(bus)));
}

}  // namespace cairn::agent::tasks
