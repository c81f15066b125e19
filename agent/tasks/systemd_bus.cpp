// Systemd over sd-bus (libsystemd): org.freedesktop.systemd1.Manager on systemd's private
// socket, or the system bus (https://www.freedesktop.org/wiki/Software/systemd/dbus/).
#include <systemd/sd-bus.h>

#include <unistd.h>

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
  // systemd's own socket first, as systemctl does for root: it needs no D-Bus daemon (the
  // sealed base is a minbase Debian with systemd and no dbus), and the agent runs as root.
  // The system bus otherwise (a root-less test, a host whose /run/systemd/private is gone).
  std::string direct_error = "not root";
  if (::geteuid() == 0) {
    sd_bus* raw = nullptr;
    int r = sd_bus_new(&raw);
    BusPtr bus(raw);
    if (r >= 0) r = sd_bus_set_address(bus.get(), "unix:path=/run/systemd/private");
    if (r >= 0) r = sd_bus_start(bus.get());
    if (r >= 0) return std::unique_ptr<Systemd>(std::make_unique<BusSystemd>(std::move(bus)));
    direct_error = std::strerror(-r);
  }
  sd_bus* bus = nullptr;
  const int r = sd_bus_open_system(&bus);
  if (r < 0) {
    return fail(Errc::unavailable,
                "connect to systemd: /run/systemd/private: " + direct_error + "; the system bus: " + std::strerror(-r),
                "service.install, service.remove and reboot need systemd as PID 1");
  }
  return std::unique_ptr<Systemd>(std::make_unique<BusSystemd>(BusPtr(bus)));
}

}  // namespace cairn::agent::tasks
