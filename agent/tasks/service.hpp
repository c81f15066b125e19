// `service.install` and `service.remove`: a service shipped as an archive, unpacked (checked,
// into a temp dir, then renamed) into <services_dir>/NAME and run by a generated, sandboxed
// systemd unit `cairn-NAME.service` (ProtectSystem=strict, PrivateTmp, NoNewPrivileges,
// DynamicUser unless asked otherwise, CPUQuota, MemoryMax), started and checked over sd-bus.
//
// service.install args:
//   {"name": "web", "archive_base64": "..." | "archive_path": "/host/file.tar.gz",
//    "exec": ["bin/web", "--port", "8080"],  // exec[0] relative to the unpacked tree
//    "env": {"K": "V"}, "cpu_quota": "50%", "memory_max": "256M",
//    "dynamic_user": true, "user": "svc" (only with dynamic_user false), "start_timeout_s": 30}
// service.remove args: {"name": "web"}
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/tasks/archive.hpp"
#include "agent/tasks/kind.hpp"

namespace cairn::agent::tasks {

inline constexpr std::size_t kMaxArchiveBase64Bytes = 96u << 20;

struct ServiceSpec {
  std::string name;
  std::string archive_base64;
  std::string archive_path;  // host path
  std::vector<std::string> exec;
  std::map<std::string, std::string> env;
  std::string cpu_quota;   // "50%"
  std::string memory_max;  // "256M"
  bool dynamic_user = true;
  std::string user;
  std::int64_t start_timeout_s = 30;
};

// Our rules, stricter than systemd's (systemd.unit(5) "unit names"): 1-64 of [A-Za-z0-9_.-],
// starting with a letter or digit; anything else is refused, never escaped.
Status validate_service_name(std::string_view name);
std::string unit_name(std::string_view service_name);  // "cairn-NAME.service"

Result<ServiceSpec> parse_install_args(const Json& args);
// Whether the service would run as root: neither a dynamic user nor a named user other than root.
bool runs_as_root(const ServiceSpec& spec);
// parse_install_args, then the node's own rules: a root service only where settings allow it.
Result<ServiceSpec> checked_install_args(const Json& args, const KindSettings& settings);
// The unit file. exec_dir is the host path of the unpacked service.
std::string render_unit(const ServiceSpec& spec, const std::string& exec_dir);

class ServiceInstallKind final : public TaskKind {
 public:
  explicit ServiceInstallKind(KindSettings settings, ArchiveLimits limits = {})
      : settings_(std::move(settings)), limits_(limits) {}
  [[nodiscard]] std::string_view name() const override { return "service.install"; }
  [[nodiscard]] Status validate(const Json& args) const override;
  TaskResult run(const Json& args, const TaskContext& context) override;

 private:
  KindSettings settings_;
  ArchiveLimits limits_;
};

class ServiceRemoveKind final : public TaskKind {
 public:
  explicit ServiceRemoveKind(KindSettings settings) : settings_(std::move(settings)) {}
  [[nodiscard]] std::string_view name() const override { return "service.remove"; }
  [[nodiscard]] Status validate(const Json& args) const override;
  TaskResult run(const Json& args, const TaskContext& context) override;

 private:
  KindSettings settings_;
};

// Shared by both kinds: stops the unit if it runs and waits until it is down.
Status stop_and_wait(Systemd& systemd, const std::string& unit, const TaskContext& context);

}  // namespace cairn::agent::tasks
