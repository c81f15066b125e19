// Root: every host path (/proc, /sys, /run, /persist) is resolved through one, so a test
// points the whole program at a temp dir and nothing touches the host by accident.
#pragma once

#include <filesystem>
#include <string_view>

namespace cairn {

class Root {
 public:
  explicit Root(std::filesystem::path base = "/") : base_(std::move(base)) {}

  // root / "proc/cmdline" and root / "/proc/cmdline" both name <base>/proc/cmdline.
  [[nodiscard]] std::filesystem::path operator/(std::string_view host_path) const {
    while (!host_path.empty() && host_path.front() == '/') host_path.remove_prefix(1);
    return base_ / host_path;
  }
  [[nodiscard]] const std::filesystem::path& base() const { return base_; }

 private:
  std::filesystem::path base_;
};

}  // namespace cairn
