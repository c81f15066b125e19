#include "agent/tasks/kind.hpp"

#include "agent/tasks/exec.hpp"
#include "agent/tasks/inventory.hpp"
#include "agent/tasks/service.hpp"

namespace cairn::agent::tasks {

TaskResult failed(protocol::FailureReason reason, std::string error) {
  TaskResult r;
  r.outcome = "failed";
  r.reason = reason;
  r.error = std::move(error);
  return r;
}

std::vector<std::string> kind_names() { return {"exec", "service.install", "service.remove", "inventory", "reboot"}; }

Result<std::unique_ptr<TaskKind>> make_kind(std::string_view name, const KindSettings& settings) {
  if (name == "exec") return std::make_unique<ExecKind>(settings);
  if (name == "service.install") return std::make_unique<ServiceInstallKind>(settings);
  if (name == "service.remove") return std::make_unique<ServiceRemoveKind>(settings);
  if (name == "inventory") return std::make_unique<InventoryKind>();
  if (name == "reboot") return std::make_unique<RebootKind>(settings);
  std::string known;
  for (const auto& k : kind_names()) known += (known.empty() ? "" : ", ") + k;
  return fail(Errc::data, "task kind '" + std::string(name.substr(0, 80)) + "': not a kind this agent runs",
              "use one of: " + known);
}

TaskResult run_task(std::string_view kind_name, const Json& args, const KindSettings& settings,
                    const TaskContext& context) {
  const auto start = context.clock.monotonic();
  auto kind = make_kind(kind_name, settings);
  if (!kind) return failed(protocol::FailureReason::invalid_args, kind.error().message);
  if (auto ok = (*kind)->validate(args); !ok) return failed(protocol::FailureReason::invalid_args, ok.error().message);
  TaskResult r = (*kind)->run(args, context);
  if (r.duration_ms == 0) {
    r.duration_ms = std::chrono::duration_cast<std::chrono::milliseconds>(context.clock.monotonic() - start).count();
  }
  return r;
}

}  // namespace cairn::agent::tasks
