// `inventory` (what the machine is: CPU, memory, disks, NICs, OS, kernel, DMI, read through
// Root) and `reboot` (completed first, then a clean reboot through systemd).
#pragma once

#include "agent/tasks/kind.hpp"

namespace cairn::agent::tasks {

Json collect_inventory(const Root& root);

class InventoryKind final : public TaskKind {
 public:
  [[nodiscard]] std::string_view name() const override { return "inventory"; }
  [[nodiscard]] Status validate(const Json& args) const override;
  TaskResult run(const Json& args, const TaskContext& context) override;
};

class RebootKind final : public TaskKind {
 public:
  explicit RebootKind(KindSettings settings) : settings_(std::move(settings)) {}
  [[nodiscard]] std::string_view name() const override { return "reboot"; }
  [[nodiscard]] Status validate(const Json& args) const override;
  TaskResult run(const Json& args, const TaskContext& context) override;

 private:
  KindSettings settings_;
};

}  // namespace cairn::agent::tasks
