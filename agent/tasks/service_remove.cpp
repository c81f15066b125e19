#include <cstdio>

#include "agent/tasks/service.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"

namespace cairn::agent::tasks {

using protocol::FailureReason;

Status ServiceRemoveKind::validate(const Json& args) const {
  if (!args.is_object() || !args.contains("name") || !args["name"].is_string()) {
    return fail(Errc::data, "service.remove args: expected {\"name\": \"NAME\"}");
  }
  return validate_service_name(args["name"].get<std::string>());
}

TaskResult ServiceRemoveKind::run(const Json& args, const TaskContext& ctx) {
  if (auto ok = validate(args); !ok) return failed(FailureReason::invalid_args, ok.error().message);
  const std::string name = args["name"].get<std::string>();
  const auto unit = unit_name(name);
  auto systemd = settings_.systemd();
  if (!systemd) return failed(FailureReason::internal, systemd.error().message);
  if (auto ok = stop_and_wait(**systemd, unit, ctx); !ok) return failed(FailureReason::internal, ok.error().message);

  std::error_code ec;
  const auto units = ctx.root / settings_.units_dir;
  const bool had_unit = std::filesystem::exists(units / unit, ec);
  std::filesystem::remove(units / "multi-user.target.wants" / unit, ec);
  std::filesystem::remove(units / unit, ec);
  if (ec) return failed(FailureReason::internal, "remove " + (units / unit).string() + ": " + ec.message());
  if (auto ok = (*systemd)->daemon_reload(); !ok) return failed(FailureReason::internal, ok.error().message);

  // The tree leaves its name in one rename, then is deleted: never half a service under NAME.
  const auto dir = ctx.root / settings_.services_dir;
  const auto target = dir / name;
  const bool had_dir = std::filesystem::exists(std::filesystem::symlink_status(target, ec));
  if (had_dir) {
    const auto doomed = dir / ("." + name + ".removed-" + random_hex(6));
    std::filesystem::rename(target, doomed, ec);
    if (ec) return failed(FailureReason::internal, "remove " + target.string() + ": " + ec.message());
    std::filesystem::remove_all(doomed, ec);
  }
  TaskResult r;
  r.output = had_unit || had_dir ? "removed " + name + " (" + unit + ")\n" : name + " was not installed\n";
  r.output_bytes = static_cast<std::int64_t>(r.output.size());
  return r;
}

}  // namespace cairn::agent::tasks
