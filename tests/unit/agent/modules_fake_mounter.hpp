// A fake Mounter for the modules' unit tests: a mount table (each target a stack of what was
// mounted there), failures on demand, and a kernel with or without MOVE_MOUNT_BENEATH.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "agent/modules/mounter.hpp"

namespace cairn::agent::modules {

class FakeMounter final : public Mounter {
 public:
  std::map<std::filesystem::path, std::vector<std::string>> table;  // target -> stack of what
  std::vector<std::filesystem::path> last_lowers;
  std::string fail_on;  // "image:<name>", "overlay", "move"
  bool beneath_supported = true;  // false: a kernel before 6.5 (h-modctl)
  bool can_move_beneath() override { return beneath_supported; }

  Status mount_image(const std::filesystem::path& image, const std::filesystem::path& target) override {
    if (fail_on == "image:" + image.filename().string()) return fail(Errc::data, "fake: bad image " + image.string());
    table[target].push_back("erofs " + image.filename().string());
    return {};
  }
  Status mount_tmpfs(const std::filesystem::path& target) override {
    table[target].push_back("tmpfs");
    return {};
  }
  Status mount_overlay(const std::vector<std::filesystem::path>& lowers, const std::filesystem::path&,
                       const std::filesystem::path&, const std::filesystem::path& target) override {
    if (fail_on == "overlay") return fail(Errc::io, "fake: overlay refused");
    last_lowers = lowers;
    std::string what = "overlay";
    for (const auto& l : lowers) what += " " + l.filename().string();
    table[target].push_back(what);
    return {};
  }
  Status make_private_mount(const std::filesystem::path& dir) override {
    if (!mounted(dir)) table[dir].push_back("bind");
    return {};
  }
  Status move_mount(const std::filesystem::path& from, const std::filesystem::path& to, bool beneath) override {
    if (fail_on == "move") return fail(Errc::io, "fake: move refused");
    if (!mounted(from)) return fail(Errc::internal, "fake: nothing at " + from.string());
    if (beneath != mounted(to)) return fail(Errc::internal, "fake: beneath must be used exactly when " + to.string() + " is mounted");
    auto what = table[from].back();
    table[from].pop_back();
    auto& stack = table[to];
    stack.insert(beneath ? stack.end() - 1 : stack.end(), what);
    return {};
  }
  Status unmount(const std::filesystem::path& target, bool) override {
    if (!mounted(target)) return fail(Errc::io, "fake: not mounted " + target.string());
    table[target].pop_back();
    return {};
  }
  Result<bool> is_mount_point(const std::filesystem::path& target) override { return mounted(target); }

  bool mounted(const std::filesystem::path& t) const {
    auto it = table.find(t);
    return it != table.end() && !it->second.empty();
  }
  std::size_t count(std::string_view prefix) const {
    std::size_t n = 0;
    for (const auto& [t, stack] : table) {
      for (const auto& s : stack) n += s.starts_with(prefix) ? 1 : 0;
    }
    return n;
  }
  // The table without the targets whose stack is empty.
  [[nodiscard]] std::map<std::filesystem::path, std::vector<std::string>> live() const {
    auto out = table;
    std::erase_if(out, [](const auto& kv) { return kv.second.empty(); });
    return out;
  }
  std::string top(const std::filesystem::path& t) const { return mounted(t) ? table.at(t).back() : ""; }
};

}  // namespace cairn::agent::modules
