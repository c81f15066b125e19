#include "agent/persist/host.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "common/fd.hpp"
#include "common/fs.hpp"

extern char** environ;

namespace cairn::agent::persist {
namespace {

struct ProgramResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, at most 16 KiB
};

// Runs a program of e2fsprogs to completion, its output captured (bounded).
Result<ProgramResult> run_program(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return fail(Errc::io, "pipe: " + std::string(std::strerror(errno)));
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return fail(Errc::unavailable, argv[0] + ": cannot run: " + std::strerror(rc), "install e2fsprogs");
  }
  write_end.reset();
  ProgramResult out;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = ::read(read_end.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (out.output.size() < 16384) out.output.append(buf.data(), static_cast<std::size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

std::string last_line(const std::string& text) {
  std::string t = text;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  const auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

class SystemHost final : public VolumeHost {
 public:
  SystemHost(Root root, const Clock& clock) : root_(std::move(root)), clock_(clock) {}

  Result<PersistTarget> locate(const DiskRule& rule, std::uint64_t min_bytes) override {
    return choose_target(root_, rule, min_bytes);
  }
  Status partition(const PersistTarget& target) override { return create_partition(root_, target); }

  Status wait_for_device(const std::filesystem::path& host_path) override {
    // The kernel re-reads the table when libfdisk closes the disk; devtmpfs (or udev) then
    // makes the node.
    const auto deadline = clock_.monotonic() + std::chrono::seconds(10);
    for (;;) {
      if (std::filesystem::exists(root_ / host_path.string())) return {};
      if (clock_.monotonic() >= deadline) {
        return fail(Errc::temporary, host_path.string() + " did not appear within 10 s after partitioning",
                    "run `partprobe`, then `cairn-agent volume-setup` again");
      }
      clock_.sleep_until(clock_.monotonic() + std::chrono::milliseconds(50));
    }
  }

  Result<std::string> signature(const std::filesystem::path& host_path) override {
    Disk d;
    d.name = host_path.filename().string();
    d.host_path = host_path;
    auto layout = read_layout(root_, d);
    if (!layout) return fail(layout.error());
    if (!layout->signature.empty()) return layout->signature;
    if (!layout->label_type.empty()) return layout->label_type + " partition table";
    // No known signature is not yet blank: a LUKS volume whose headers were zeroed still has
    // its encrypted data from 16 MiB on. Blank means zeros over the header area and the start
    // of the data area (never written by a first boot that stopped before formatting).
    UniqueFd fd(::open((root_ / host_path.string()).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail(Errc::io, "reading " + host_path.string() + ": " + std::strerror(errno));
    std::array<char, 65536> buf{};
    std::uint64_t done = 0;
    constexpr std::uint64_t kBlankCheckBytes = 17 * 1024 * 1024;
    while (done < kBlankCheckBytes) {
      const ssize_t n = ::pread(fd.get(), buf.data(), buf.size(), static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(Errc::io, "reading " + host_path.string() + ": " + std::strerror(errno));
      if (n == 0) break;
      for (ssize_t i = 0; i < n; ++i) {
        if (buf[static_cast<std::size_t>(i)] != 0) {
          return "data of an unknown kind (non-zero bytes at offset " + std::to_string(done + static_cast<std::uint64_t>(i)) + ")";
        }
      }
      done += static_cast<std::uint64_t>(n);
    }
    return std::string{};
  }

  bool device_mapper_available() override { return persist::device_mapper_available(root_); }

  Status make_filesystem(const std::filesystem::path& host_path) override {
    // 4 KiB blocks: Linux 6.1 supports fs-verity only when the block size equals the page
    // size, and mke2fs would pick 1 KiB for a small volume.
    auto r = run_program({"mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-L", "cairn-persist",
                          (root_ / host_path.string()).string()});
    if (!r) return fail(r.error());
    if (r->exit_code != 0) {
      return fail(Errc::io, "mkfs.ext4 on " + host_path.string() + " failed (exit " + std::to_string(r->exit_code) +
                                "): " + last_line(r->output));
    }
    return {};
  }

  Status check_filesystem(const std::filesystem::path& host_path) override {
    auto r = run_program({"e2fsck", "-p", (root_ / host_path.string()).string()});
    if (!r) return fail(r.error());
    // e2fsck(8): 0 clean, 1 errors corrected, 2 corrected and the system should reboot; 4 and
    // above: errors left.
    if (r->exit_code >= 4) {
      return fail(Errc::io, "e2fsck -p on " + host_path.string() + " left errors (exit " + std::to_string(r->exit_code) +
                                "): " + last_line(r->output),
                  "run e2fsck " + host_path.string() + " by hand");
    }
    return {};
  }

  Status mount(const std::filesystem::path& host_path, const std::filesystem::path& mount_point) override {
    if (auto ok = make_dirs(mount_point, 0755); !ok) return fail(ok.error());
    const auto source = root_ / host_path.string();
    if (::mount(source.c_str(), mount_point.c_str(), "ext4", MS_NOSUID | MS_NODEV, nullptr) != 0) {
      return fail(Errc::io, "mounting " + host_path.string() + " at " + mount_point.string() + ": " + std::strerror(errno),
                  "check dmesg for the ext4 error");
    }
    return {};
  }

  Result<bool> is_mounted(const std::filesystem::path& mount_point) override { return is_mount_point(root_, mount_point); }

  std::filesystem::path resolve(const std::filesystem::path& host_path) override { return root_ / host_path.string(); }

 private:
  Root root_;
  const Clock& clock_;
};

}  // namespace

bool device_mapper_available(const Root& root) {
  if (std::filesystem::exists(root / "dev/mapper/control")) return true;
  auto misc = read_file_if_exists(root / "proc/misc", 64 * 1024);
  return misc && *misc && (*misc)->find(" device-mapper\n") != std::string::npos;
}

Result<bool> is_mount_point(const Root& root, const std::filesystem::path& mount_point) {
  auto text = read_file_if_exists(root / "proc/self/mountinfo", 4 * 1024 * 1024);
  if (!text) return fail(text.error());
  if (!*text) return false;
  std::istringstream in(**text);
  std::string line;
  const auto want = mount_point.lexically_normal().string();
  while (std::getline(in, line)) {
    // proc(5): id parent major:minor root mount-point options ...
    std::istringstream fields(line);
    std::string id, parent, dev, fsroot, point;
    if (!(fields >> id >> parent >> dev >> fsroot >> point)) continue;
    if (point == want) return true;
  }
  return false;
}

std::unique_ptr<VolumeHost> make_system_host(const Root& root, const Clock& clock) {
  return std::make_unique<SystemHost>(root, clock);
}

}  // namespace cairn::agent::persist
