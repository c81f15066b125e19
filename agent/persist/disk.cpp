// Disk choice through sysfs and /dev/disk (via Root), partition tables through libfdisk: the
// only file of Cairn that includes libfdisk.h.
#include "agent/persist/disk.hpp"

#include <libfdisk/libfdisk.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <system_error>

#include "common/fs.hpp"

namespace cairn::agent::persist {
namespace {

// GPT partition type "Linux filesystem data" (UAPI Discoverable Partitions Specification).
constexpr const char* kLinuxFsType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

struct ContextDeleter {
  void operator()(fdisk_context* c) const { fdisk_unref_context(c); }
};
struct TableDeleter {
  void operator()(fdisk_table* t) const { fdisk_unref_table(t); }
};
struct IterDeleter {
  void operator()(fdisk_iter* i) const { fdisk_free_iter(i); }
};
struct PartitionDeleter {
  void operator()(fdisk_partition* p) const { fdisk_unref_partition(p); }
};
struct ParttypeDeleter {
  void operator()(fdisk_parttype* t) const { fdisk_unref_parttype(t); }
};
using Context = std::unique_ptr<fdisk_context, ContextDeleter>;

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool skipped_device(const std::string& name) {
  for (const char* prefix : {"loop", "ram", "zram", "dm-", "sr", "fd", "nbd", "md"}) {
    if (name.starts_with(prefix)) return true;
  }
  return false;
}

Result<Disk> disk_from_sysfs(const Root& root, const std::string& name) {
  const auto sys = root / ("sys/block/" + name);
  auto size = read_file(sys / "size", 64);
  if (!size) return fail(size.error().with_context("disk " + name));
  Disk d;
  d.name = name;
  d.host_path = "/dev/" + name;
  try {
    d.size_bytes = std::stoull(trimmed(*size)) * 512;  // sysfs counts 512-byte sectors (block/stat.rst)
  } catch (const std::exception&) {
    return fail(Errc::data, sys.string() + "/size: not a number ('" + trimmed(*size) + "')");
  }
  if (auto ro = read_file_if_exists(sys / "ro", 64); ro && *ro) d.read_only = trimmed(**ro) == "1";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(sys, ec)) {
    if (std::filesystem::exists(entry.path() / "partition")) d.partitions.push_back(entry.path().filename().string());
  }
  std::sort(d.partitions.begin(), d.partitions.end());
  return d;
}

// A /dev/disk/by-*/<name> link (through the root) to the kernel name of its device.
Result<std::string> resolve_link(const Root& root, const std::string& dir, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return fail(Errc::config, "disk rule: '" + name + "' is not a name in /dev/disk/" + dir,
                "use the name as `ls /dev/disk/" + dir + "` shows it");
  }
  const auto link = root / ("dev/disk/" + dir + "/" + name);
  std::error_code ec;
  const auto target = std::filesystem::read_symlink(link, ec);
  if (ec) {
    return fail(Errc::config, "disk rule: /dev/disk/" + dir + "/" + name + ": " + ec.message(),
                "check the name with `ls -l /dev/disk/" + dir + "`");
  }
  return target.filename().string();
}

Result<Context> open_context(const Root& root, const Disk& disk, bool read_only) {
  Context cxt(fdisk_new_context());
  if (!cxt) return fail(Errc::internal, "libfdisk: out of memory");
  const auto path = root / disk.host_path.string();
  const int rc = fdisk_assign_device(cxt.get(), path.c_str(), read_only ? 1 : 0);
  if (rc < 0) {
    return fail(Errc::io, "disk " + disk.host_path.string() + ": cannot open: " + std::strerror(-rc),
                "check that the disk exists and is not in use");
  }
  return cxt;
}

std::string describe_layout(const DiskLayout& l) {
  std::string out;
  if (!l.label_type.empty()) out += l.label_type + " partition table";
  for (const auto& p : l.parts) {
    out += (out.empty() ? "" : ", ") + std::string("partition ") + std::to_string(p.number) +
           (p.name.empty() ? "" : " '" + p.name + "'");
  }
  if (!l.signature.empty()) out += (out.empty() ? "" : ", ") + l.signature + " signature";
  return out;
}

std::string mib(std::uint64_t bytes) { return std::to_string(bytes / (1024 * 1024)) + " MiB"; }

}  // namespace

Result<DiskRule> parse_disk_rule(std::string_view text) {
  DiskRule r;
  if (text == "largest-empty") return r;
  const auto colon = text.find(':');
  const std::string kind(text.substr(0, colon));
  const std::string value(colon == std::string_view::npos ? "" : text.substr(colon + 1));
  if (colon != std::string_view::npos && !value.empty()) {
    if (kind == "by-path") return DiskRule{DiskRule::Kind::by_path, value};
    if (kind == "by-id") return DiskRule{DiskRule::Kind::by_id, value};
    if (kind == "device" && value.starts_with("/dev/")) return DiskRule{DiskRule::Kind::device, value};
  }
  return fail(Errc::config, "persist disk rule '" + std::string(text) + "': not understood",
              "use by-path:NAME, by-id:NAME, device:/dev/NAME or largest-empty");
}

std::string to_string(const DiskRule& rule) {
  switch (rule.kind) {
    case DiskRule::Kind::by_path: return "by-path:" + rule.value;
    case DiskRule::Kind::by_id: return "by-id:" + rule.value;
    case DiskRule::Kind::device: return "device:" + rule.value;
    case DiskRule::Kind::largest_empty: return "largest-empty";
  }
  return "largest-empty";
}

std::optional<DiskLayout::Part> DiskLayout::cairn_partition() const {
  if (label_type != "gpt") return std::nullopt;
  for (const auto& p : parts) {
    if (p.name == kPartitionLabel) return p;
  }
  return std::nullopt;
}

std::filesystem::path partition_path(const std::string& disk_name, int number) {
  // The kernel adds "p" when the disk's name ends in a digit (nvme0n1p1, mmcblk0p1).
  const bool digit = !disk_name.empty() && disk_name.back() >= '0' && disk_name.back() <= '9';
  return "/dev/" + disk_name + (digit ? "p" : "") + std::to_string(number);
}

Result<std::vector<Disk>> list_disks(const Root& root) {
  std::vector<Disk> out;
  std::error_code ec;
  std::filesystem::directory_iterator it(root / "sys/block", ec);
  if (ec) return fail(Errc::io, (root / "sys/block").string() + ": " + ec.message(), "is sysfs mounted?");
  for (const auto& entry : it) {
    const auto name = entry.path().filename().string();
    if (skipped_device(name)) continue;
    auto d = disk_from_sysfs(root, name);
    if (!d) return fail(d.error());
    out.push_back(std::move(*d));
  }
  std::sort(out.begin(), out.end(), [](const Disk& a, const Disk& b) { return a.name < b.name; });
  return out;
}

Result<DiskLayout> read_layout(const Root& root, const Disk& disk) {
  auto cxt = open_context(root, disk, true);
  if (!cxt) return fail(cxt.error());
  DiskLayout l;
  if (const char* collision = fdisk_get_collision(cxt->get())) l.signature = collision;
  if (fdisk_has_label(cxt->get()) == 0) return l;
  if (const auto* label = fdisk_get_label(cxt->get(), nullptr)) l.label_type = fdisk_label_get_name(label);
  fdisk_table* raw = nullptr;
  if (fdisk_get_partitions(cxt->get(), &raw) < 0) {
    return fail(Errc::io, "disk " + disk.host_path.string() + ": reading its " + l.label_type + " partition table failed");
  }
  std::unique_ptr<fdisk_table, TableDeleter> table(raw);
  std::unique_ptr<fdisk_iter, IterDeleter> iter(fdisk_new_iter(FDISK_ITER_FORWARD));
  fdisk_partition* pa = nullptr;
  const auto sector = fdisk_get_sector_size(cxt->get());
  while (fdisk_table_next_partition(table.get(), iter.get(), &pa) == 0) {
    DiskLayout::Part p;
    p.number = static_cast<int>(fdisk_partition_get_partno(pa)) + 1;
    if (const char* name = fdisk_partition_get_name(pa)) p.name = name;
    if (fdisk_partition_has_size(pa)) p.size_bytes = fdisk_partition_get_size(pa) * sector;
    l.parts.push_back(std::move(p));
  }
  return l;
}

Result<PersistTarget> choose_target(const Root& root, const DiskRule& rule, std::uint64_t min_bytes) {
  const auto existing = [&](const Disk& disk, const DiskLayout& l) -> std::optional<PersistTarget> {
    auto part = l.cairn_partition();
    if (!part) return std::nullopt;
    return PersistTarget{disk, true, part->number, partition_path(disk.name, part->number)};
  };
  const auto check_new = [&](const Disk& disk, const DiskLayout& l) -> Result<PersistTarget> {
    if (!l.empty() || !disk.partitions.empty()) {
      const auto what = l.empty() ? std::to_string(disk.partitions.size()) + " partition(s) the kernel lists" : describe_layout(l);
      return fail(Errc::refused,
                  "disk " + disk.host_path.string() + " holds " + what + " and no cairn-persist partition: left alone",
                  "choose another disk in the persist disk rule, or clear this one yourself if its data is not needed");
    }
    if (disk.read_only) {
      return fail(Errc::refused, "disk " + disk.host_path.string() + " is read-only", "choose a writable disk");
    }
    if (disk.size_bytes < min_bytes) {
      return fail(Errc::refused,
                  "disk " + disk.host_path.string() + " is too small for /persist: " + mib(disk.size_bytes) +
                      ", at least " + mib(min_bytes) + " needed",
                  "attach a larger disk, or lower persist min_size_mib in the agent config");
    }
    return PersistTarget{disk, false, 1, partition_path(disk.name, 1)};
  };

  if (rule.kind != DiskRule::Kind::largest_empty) {
    std::string name;
    if (rule.kind == DiskRule::Kind::device) {
      name = std::filesystem::path(rule.value).filename().string();
    } else {
      auto resolved = resolve_link(root, rule.kind == DiskRule::Kind::by_path ? "by-path" : "by-id", rule.value);
      if (!resolved) return fail(resolved.error());
      name = *resolved;
    }
    if (!std::filesystem::exists(root / ("sys/block/" + name))) {
      return fail(Errc::config, "disk rule " + to_string(rule) + ": " + name + " is not a whole disk in /sys/block",
                  "name a disk, not a partition");
    }
    auto disk = disk_from_sysfs(root, name);
    if (!disk) return fail(disk.error());
    auto layout = read_layout(root, *disk);
    if (!layout) return fail(layout.error());
    if (auto t = existing(*disk, *layout)) return *t;
    return check_new(*disk, *layout);
  }

  auto disks = list_disks(root);
  if (!disks) return fail(disks.error());
  std::optional<PersistTarget> best;
  std::vector<std::string> passed_over;
  for (const auto& disk : *disks) {
    auto layout = read_layout(root, disk);
    if (!layout) {
      passed_over.push_back(disk.name + " (" + layout.error().message + ")");
      continue;
    }
    if (auto t = existing(disk, *layout)) return *t;  // a later boot: the volume is there
    auto candidate = check_new(disk, *layout);
    if (!candidate) {
      passed_over.push_back(disk.name + " (" + candidate.error().message + ")");
      continue;
    }
    if (!best || candidate->disk.size_bytes > best->disk.size_bytes) best = *candidate;
  }
  if (best) return *best;
  std::string list;
  for (const auto& p : passed_over) list += (list.empty() ? "" : "; ") + p;
  return fail(Errc::refused, "no empty disk for /persist" + (list.empty() ? std::string(" (no disk found)") : ": " + list),
              "attach an empty disk, or name one with the persist disk rule (by-path:, by-id:, device:)");
}

Status create_partition(const Root& root, const PersistTarget& target) {
  auto layout = read_layout(root, target.disk);
  if (!layout) return fail(layout.error());
  if (!layout->empty()) {
    return fail(Errc::refused, "disk " + target.disk.host_path.string() + " is no longer empty (" +
                                   describe_layout(*layout) + "): left alone");
  }
  auto cxt = open_context(root, target.disk, false);
  if (!cxt) return fail(cxt.error());
  const std::string where = "disk " + target.disk.host_path.string();
  if (fdisk_create_disklabel(cxt->get(), "gpt") < 0) return fail(Errc::io, where + ": creating a GPT failed");
  std::unique_ptr<fdisk_partition, PartitionDeleter> pa(fdisk_new_partition());
  std::unique_ptr<fdisk_parttype, ParttypeDeleter> type(
      fdisk_label_get_parttype_from_string(fdisk_get_label(cxt->get(), nullptr), kLinuxFsType));
  if (!pa || !type) return fail(Errc::internal, "libfdisk: out of memory");
  fdisk_partition_set_partno(pa.get(), 0);
  fdisk_partition_start_follow_default(pa.get(), 1);
  fdisk_partition_end_follow_default(pa.get(), 1);
  fdisk_partition_set_name(pa.get(), std::string(kPartitionLabel).c_str());
  fdisk_partition_set_type(pa.get(), type.get());
  if (int rc = fdisk_add_partition(cxt->get(), pa.get(), nullptr); rc < 0) {
    return fail(Errc::io, where + ": adding the cairn-persist partition: " + std::strerror(-rc));
  }
  if (int rc = fdisk_write_disklabel(cxt->get()); rc < 0) {
    return fail(Errc::io, where + ": writing the partition table: " + std::strerror(-rc));
  }
  // The kernel learns of the new partition only when asked (BLKRRPART, as fdisk(8) does after
  // writing; deassigning only syncs, seen in the VM: /dev/vda1 never appeared). A no-op for an
  // image file. A failure (device busy) is left to wait_for_device, whose hint is partprobe.
  (void)fdisk_reread_partition_table(cxt->get());
  // For a block device, deassigning syncs.
  if (int rc = fdisk_deassign_device(cxt->get(), 0); rc < 0) {
    return fail(Errc::io, where + ": closing after writing the partition table: " + std::strerror(-rc));
  }
  return {};
}

}  // namespace cairn::agent::persist
