// The `exec` kind (see exec.cpp for how a process is run, stopped and read).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "agent/tasks/kind.hpp"

namespace cairn::agent::tasks {

struct ExecArgs {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // on top of PATH, HOME=/, LANG=C.UTF-8 (nothing inherited)
  std::string cwd = "/";                   // a host path, resolved through Root
};

// Errc::data for malformed arguments, Errc::refused for a command outside the allowlist.
Result<ExecArgs> parse_exec_args(const Json& args, const KindSettings& settings);

class ExecKind final : public TaskKind {
 public:
  explicit ExecKind(KindSettings settings) : settings_(std::move(settings)) {}
  [[nodiscard]] std::string_view name() const override { return "exec"; }
  [[nodiscard]] Status validate(const Json& args) const override;
  TaskResult run(const Json& args, const TaskContext& context) override;

 private:
  KindSettings settings_;
};

}  // namespace cairn::agent::tasks
