// Fixtures of the modules' mount tests: real EROFS images (mkfs.erofs) of small trees, the
// union's paths in a temp dir, and the leak checks (mounts under the temp dir in
// /proc/self/mountinfo, loop devices backed by its files in /sys/block/loop*/loop).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/modules/mounter.hpp"
#include "agent/modules/union.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

namespace mod = cairn::agent::modules;

// The binaries meson hands the end-to-end tests (modules_control_test, modules_apply_test).
inline std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

inline std::optional<std::string> binaries_missing() {
  for (const char* name : {"CAIRN_AGENT", "CAIRN_CONTROL", "CAIRN_MODULE"}) {
    if (env_or_empty(name).empty()) return std::string(name) + " is not set (run through meson test)";
  }
  return std::nullopt;
}

inline std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

inline std::filesystem::path mkfs_erofs_path() {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin"}) {
    if (std::filesystem::exists(std::filesystem::path(dir) / "mkfs.erofs")) return std::filesystem::path(dir) / "mkfs.erofs";
  }
  return {};
}

// Why the mount tests cannot run here, or nullopt when they can.
inline std::optional<std::string> mount_tests_unavailable() {
  if (::geteuid() != 0) return "needs root (loop devices and mounts)";
  if (!std::filesystem::exists("/dev/loop-control")) return "no /dev/loop-control (loop module not loaded)";
  auto fs = read_file("/proc/filesystems", 64 * 1024);
  if (!fs || fs->find("erofs") == std::string::npos) return "the kernel has no EROFS";
  if (fs->find("overlay") == std::string::npos) return "the kernel has no overlayfs";
  if (mkfs_erofs_path().empty()) return "mkfs.erofs not installed (apt-get install erofs-utils)";
  return std::nullopt;
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

inline std::string read_text(const std::filesystem::path& p) { return slurp(p); }

// Mount points at or under `dir`, from /proc/self/mountinfo.
inline std::vector<std::filesystem::path> mounts_under(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  auto text = read_file("/proc/self/mountinfo", 4 << 20);
  if (!text) return out;
  for (const auto& p : mod::parse_mount_points(*text)) {
    if (p.string().starts_with(dir.string())) out.push_back(p);
  }
  return out;
}

// Loop devices whose backing file lies under `dir`.
inline std::vector<std::string> loops_under(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/sys/block", ec)) {
    const auto name = e.path().filename().string();
    if (!name.starts_with("loop")) continue;
    auto backing = read_file_if_exists(e.path() / "loop/backing_file", 8192);
    if (backing && *backing && (*backing)->starts_with(dir.string())) out.push_back(name + " " + **backing);
  }
  return out;
}

struct ModulesHost {
  TempDir tmp;
  mod::UnionPaths paths;
  std::unique_ptr<mod::Mounter> mounter = mod::make_linux_mounter(Root("/"));

  // beneath = false: a kernel without MOVE_MOUNT_BENEATH (generation dirs + symlink swap).
  explicit ModulesHost(mod::UpperMode mode = mod::UpperMode::tmpfs, bool beneath = true) {
    if (!beneath) mounter = mod::make_linux_mounter(Root("/"), {.allow_move_beneath = false});
    paths.mount_point = tmp.path() / "union";
    paths.run_dir = tmp.path() / "run/cairn/modules";
    paths.persist_upper = tmp.path() / "persist/cairn/modules/upper";
    paths.upper_mode = mode;
  }

  // An EROFS image of a tree holding the module's extension-release file plus `files`.
  mod::Layer module(const std::string& name, std::int64_t priority, const std::map<std::string, std::string>& files,
                    std::vector<std::string> depends = {}) {
    const auto src = tmp.path() / "src" / name;
    write_text(src / "usr/lib/extension-release.d" / ("extension-release." + name), "ID=_any\n");
    for (const auto& [path, text] : files) write_text(src / path, text);
    const auto image = tmp.path() / "images" / (name + ".erofs");
    std::filesystem::create_directories(image.parent_path());
    auto r = run_capture({mkfs_erofs_path().string(), "--quiet", "-T0", "--all-root", image.string(), src.string()}, tmp.path());
    if (r.exit_code != 0) throw std::runtime_error("mkfs.erofs failed: " + r.err);
    return layer_of(name, priority, image, std::move(depends));
  }

  static mod::Layer layer_of(const std::string& name, std::int64_t priority, const std::filesystem::path& image,
                             std::vector<std::string> depends = {}) {
    auto bytes = read_file(image, 64 << 20);
    mod::Layer l;
    l.name = name;
    l.version = "1.0";
    l.priority = priority;
    l.image = image;
    l.image_digest = "sha256:" + sha256_hex(bytes.value_or(""));
    l.depends = std::move(depends);
    return l;
  }

  // The re-verification a real agent does before mounting: the image still has its sha256.
  static mod::UnionChecks checks() {
    return mod::default_checks([](const mod::Layer& l) -> Status {
      auto bytes = read_file(l.image, 64 << 20);
      if (!bytes) return fail(bytes.error());
      if ("sha256:" + sha256_hex(*bytes) != l.image_digest) {
        return fail(Errc::data, "module " + l.name + ": stored image changed since it was verified (sha256 mismatch)");
      }
      return {};
    });
  }

  [[nodiscard]] mod::UnionManager manager() { return mod::UnionManager(*mounter, paths); }
  [[nodiscard]] mod::UnionManager manager(mod::Mounter& m) { return mod::UnionManager(m, paths); }

  ~ModulesHost() {
    // Never leave a mount behind, whatever the test did.
    (void)mod::UnionManager(*mounter, paths).teardown();
    for (int i = 0; i < 8; ++i) {
      auto left = mounts_under(tmp.path());
      if (left.empty()) break;
      for (auto it = left.rbegin(); it != left.rend(); ++it) (void)mounter->unmount(*it, true);
    }
  }
};

}  // namespace cairn::test
