#include "agent/runtime/system_stats.hpp"

#include <sys/statvfs.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "common/fs.hpp"

namespace cairn::agent {
namespace {

constexpr std::size_t kMaxProcBytes = 64 * 1024;

std::string read_proc(const Root& root, std::string_view path) {
  return read_file(root / path, kMaxProcBytes).value_or("");
}

}  // namespace

void collect_system_stats(const Root& root, const std::filesystem::path& disk_path,
                          protocol::HeartbeatRequest& hb) {
  hb.boot_id = read_proc(root, "proc/sys/kernel/random/boot_id");
  while (!hb.boot_id.empty() && hb.boot_id.back() == '\n') hb.boot_id.pop_back();

  const auto loadavg = read_proc(root, "proc/loadavg");
  std::sscanf(loadavg.c_str(), "%lf %lf %lf", &hb.load1, &hb.load5, &hb.load15);

  const auto uptime = read_proc(root, "proc/uptime");
  double up = 0;
  if (std::sscanf(uptime.c_str(), "%lf", &up) == 1 && up > 0) hb.uptime_s = static_cast<std::uint64_t>(up);

  // /proc/meminfo values are in kB (proc(5)).
  std::istringstream meminfo(read_proc(root, "proc/meminfo"));
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "MemTotal:") hb.mem_total_bytes = kb * 1024;
    if (key == "MemAvailable:") hb.mem_available_bytes = kb * 1024;
  }

  std::istringstream cpuinfo(read_proc(root, "proc/stat"));
  std::string line;
  hb.cpu_count = 0;
  while (std::getline(cpuinfo, line)) {
    if (line.size() > 3 && line.starts_with("cpu") && line[3] >= '0' && line[3] <= '9') ++hb.cpu_count;
  }

  struct statvfs vfs {};
  if (::statvfs(disk_path.c_str(), &vfs) == 0) {
    hb.disk_total_bytes = static_cast<std::uint64_t>(vfs.f_blocks) * vfs.f_frsize;
    hb.disk_free_bytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  }
}

}  // namespace cairn::agent
