// A task kind: one small class per kind of work a node runs ("exec", ...), behind one
// interface, so the service loop and `cairn-agent task run` take the same code path.
// A kind validates its arguments (a bad one is invalid_args, never retried), then runs to a
// TaskResult: success, or a failure with a reason from the protocol's fixed set.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "common/json.hpp"
#include "common/protocol/tasks.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "agent/tasks/systemd.hpp"

namespace cairn::agent::tasks {

// What a kind's run() gets besides its arguments.
struct TaskContext {
  const Root& root;
  const Clock& clock;
  std::chrono::seconds timeout{0};  // 0: the kind's default
  // Readable when the task must stop (an operator cancelled it, its lease was lost, the
  // service is stopping): a kind polls it and ends with outcome "cancelled" (or fails "killed").
  int cancel_fd = -1;
  // Time between SIGTERM and SIGKILL of a process group (exec).
  std::chrono::milliseconds kill_grace{std::chrono::seconds(5)};
};

struct TaskResult {
  std::string outcome = "succeeded";  // "succeeded", "failed" or "cancelled"
  std::optional<protocol::FailureReason> reason;  // set when failed
  std::optional<int> exit_code;
  std::string error;   // one line
  std::string output;  // at most protocol::kMaxTaskOutputBytes, the tail when truncated
  bool output_truncated = false;
  std::int64_t output_bytes = 0;
  std::int64_t duration_ms = 0;
  // Run once the completion reached control (reboot: only then). Empty for most kinds.
  std::function<Status()> after_complete;

  [[nodiscard]] bool ok() const { return outcome == "succeeded"; }
};

// A failed result with the given reason and message.
TaskResult failed(protocol::FailureReason reason, std::string error);

class TaskKind {
 public:
  virtual ~TaskKind() = default;
  [[nodiscard]] virtual std::string_view name() const = 0;
  // Checks the arguments without side effects; Errc::data with the field at fault.
  [[nodiscard]] virtual Status validate(const Json& args) const = 0;
  // Runs the task to its end (validate() passed). Never throws.
  virtual TaskResult run(const Json& args, const TaskContext& context) = 0;
};

// What the agent's configuration gives the kinds (the tasks block of agent.json).
struct KindSettings {
  // exec: when non-empty, argv[0] must be one of these (exact string). Only the node's
  // configuration sets it: nothing a task carries can widen it.
  std::vector<std::string> exec_allowlist;
  // service.install: whether a service may run as root (dynamic_user false without a user, or
  // user root). Off unless the node's configuration says so: a root service runs outside every
  // sandbox this agent sets, so control could otherwise take the node over with one task.
  bool allow_root_services = false;
  // service.install / service.remove: where services are unpacked and units written (host
  // paths, resolved through the task's Root), and how systemd is reached (a fake in tests).
  std::string services_dir = "/var/lib/cairn/services";
  std::string units_dir = "/etc/systemd/system";
  std::function<Result<std::unique_ptr<Systemd>>()> systemd = connect_systemd;
};

// The kinds this agent can run, by name (what heartbeats advertise as capabilities).
std::vector<std::string> kind_names();

// The kind called `name`, or Errc::data naming the known kinds.
Result<std::unique_ptr<TaskKind>> make_kind(std::string_view name, const KindSettings& settings);

// Validates, runs and times a task: the one path of the service and of `cairn-agent task run`.
// Bad arguments or an unknown kind come back as a failed result with reason invalid_args.
TaskResult run_task(std::string_view kind, const Json& args, const KindSettings& settings,
                    const TaskContext& context);

}  // namespace cairn::agent::tasks
