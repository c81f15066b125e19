// The `inventory` kind: what the machine is, as one JSON object in the task's output. Every
// file is read through Root (a test runs it on a fake tree). No arguments.
//   {"cpu": {"model", "count"}, "memory": {"total_bytes"}, "disks": [{"name", "size_bytes",
//    "rotational", "model"}], "nics": [{"name", "mac", "state", "mtu"}], "os": {"id",
//    "version_id", "pretty_name"}, "kernel": {"release"}, "dmi": {"sys_vendor", ...}}
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <string>

#include "agent/tasks/inventory.hpp"
#include "common/fs.hpp"

namespace cairn::agent::tasks {
namespace {

constexpr std::size_t kMaxFile = 1 << 20;
constexpr std::size_t kMaxEntries = 256;  // disks, NICs: a bound on what a peer tree can make us list

std::string first_line(const std::filesystem::path& p) {
  auto text = read_file(p, kMaxFile);
  if (!text) return {};
  auto s = text->substr(0, text->find('\n'));
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::vector<std::string> list_dir(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (names.size() >= kMaxEntries) break;
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// What a file holds as a number; anything else is 0.
std::uint64_t to_u64(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  (void)end;
  return ec == std::errc() ? v : 0;
}

std::string unquote(std::string v) {
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) v = v.substr(1, v.size() - 2);
  return v;
}

}  // namespace

Json collect_inventory(const Root& root) {
  Json inv = Json::object();

  std::string model;
  std::uint64_t cpus = 0;
  if (auto text = read_file(root / "proc/cpuinfo", 8 * kMaxFile)) {
    std::size_t pos = 0;
    while (pos < text->size()) {
      const auto nl = std::min(text->find('\n', pos), text->size());
      const std::string line = text->substr(pos, nl - pos);
      pos = nl + 1;
      if (line.starts_with("processor")) ++cpus;
      if (model.empty() && line.starts_with("model name")) {
        const auto colon = line.find(':');
        if (colon != std::string::npos) model = line.substr(std::min(line.size(), colon + 2));
      }
    }
  }
  inv["cpu"] = {{"model", model}, {"count", cpus}};

  std::uint64_t mem_kib = 0;
  if (auto text = read_file(root / "proc/meminfo", kMaxFile)) {
    const auto at = text->find("MemTotal:");
    if (at != std::string::npos) mem_kib = to_u64(text->substr(at + 9, text->find("kB", at) - at - 9));
  }
  inv["memory"] = {{"total_bytes", mem_kib * 1024}};

  Json disks = Json::array();
  for (const auto& name : list_dir(root / "sys/block")) {
    if (name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram")) continue;
    const auto dir = root / "sys/block" / name;
    disks.push_back({{"name", name},
                     {"size_bytes", to_u64(first_line(dir / "size")) * 512},  // always 512-byte sectors
                     {"rotational", first_line(dir / "queue/rotational") == "1"},
                     {"model", first_line(dir / "device/model")}});
  }
  inv["disks"] = disks;

  Json nics = Json::array();
  for (const auto& name : list_dir(root / "sys/class/net")) {
    if (name == "lo") continue;
    const auto dir = root / "sys/class/net" / name;
    nics.push_back({{"name", name},
                    {"mac", first_line(dir / "address")},
                    {"state", first_line(dir / "operstate")},
                    {"mtu", to_u64(first_line(dir / "mtu"))}});
  }
  inv["nics"] = nics;

  Json os = {{"id", ""}, {"version_id", ""}, {"pretty_name", ""}};
  auto release = read_file(root / "etc/os-release", kMaxFile);
  if (!release) release = read_file(root / "usr/lib/os-release", kMaxFile);
  if (release) {
    std::size_t pos = 0;
    while (pos < release->size()) {
      const auto nl = std::min(release->find('\n', pos), release->size());
      const std::string line = release->substr(pos, nl - pos);
      pos = nl + 1;
      const auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = line.substr(0, eq);
      if (key == "ID") os["id"] = unquote(line.substr(eq + 1));
      if (key == "VERSION_ID") os["version_id"] = unquote(line.substr(eq + 1));
      if (key == "PRETTY_NAME") os["pretty_name"] = unquote(line.substr(eq + 1));
    }
  }
  inv["os"] = os;
  inv["kernel"] = {{"release", first_line(root / "proc/sys/kernel/osrelease")}};

  Json dmi = Json::object();
  for (const char* f : {"sys_vendor", "product_name", "product_version", "board_vendor", "board_name", "bios_vendor",
                        "bios_version", "chassis_type"}) {
    dmi[f] = first_line(root / "sys/class/dmi/id" / f);  // product_uuid/serial: root-only, and identity's business
  }
  inv["dmi"] = dmi;
  return inv;
}

Status InventoryKind::validate(const Json& args) const {
  if (!args.is_null() && !(args.is_object() && args.empty())) {
    return fail(Errc::data, "inventory args: takes none (send {})");
  }
  return {};
}

TaskResult InventoryKind::run(const Json& args, const TaskContext& ctx) {
  if (auto ok = validate(args); !ok) return failed(protocol::FailureReason::invalid_args, ok.error().message);
  TaskResult r;
  r.output = dump_json(collect_inventory(ctx.root), 2) + "\n";
  r.output_bytes = static_cast<std::int64_t>(r.output.size());
  if (r.output.size() > protocol::kMaxTaskOutputBytes) {
    r.output = r.output.substr(r.output.size() - protocol::kMaxTaskOutputBytes);
    r.output_truncated = true;
  }
  return r;
}

Status RebootKind::validate(const Json& args) const {
  if (!args.is_null() && !(args.is_object() && args.empty())) return fail(Errc::data, "reboot args: takes none (send {})");
  return {};
}

TaskResult RebootKind::run(const Json& args, const TaskContext&) {
  if (auto ok = validate(args); !ok) return failed(protocol::FailureReason::invalid_args, ok.error().message);
  auto systemd = settings_.systemd();
  if (!systemd) return failed(protocol::FailureReason::internal, systemd.error().message);
  // Completed first, rebooted after: a reboot before the completion would come back as an
  // expired lease and reboot the node again. The reboot itself is a clean systemd shutdown,
  // whose SIGTERM drains this agent (its other tasks get the stop timeout).
  std::shared_ptr<Systemd> bus(std::move(*systemd));
  TaskResult r;
  r.output = "reboot requested through systemd; it starts once this completion is reported\n";
  r.output_bytes = static_cast<std::int64_t>(r.output.size());
  r.after_complete = [bus] { return bus->reboot(); };
  return r;
}

}  // namespace cairn::agent::tasks
