// Disk choice through sysfs and /dev/disk (via Root), partition tables through libfdisk: the
// only file of Cairn that includes libfdisk.h.
#include "agent/persist/disk.hpp"

#include <fcntl.h>
#include <libfdisk/libfdisk.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <system_error>

#include "common/dynamic_library.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"

namespace cairn::agent::persist {
namespace {

// GPT partition type "Linux filesystem data" (UAPI Discoverable Partitions Specification).
constexpr const char* kLinuxFsType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

// libfdisk is loaded on first use (dlopen, as agent/tasks/archive.cpp does for libarchive): only
// the persist stage's disk setup needs it, so the service loop does not map it (agent RSS).
// Only the declarations of <libfdisk.h> are used here.
constexpr const char* kLibFdisk = "libfdisk.so.1";

#define CAIRN_FDISK_FUNCTIONS(X) \
  X(fdisk_add_partition) \
  X(fdisk_assign_device) \
  X(fdisk_create_disklabel) \
  X(fdisk_deassign_device) \
  X(fdisk_free_iter) \
  X(fdisk_get_collision) \
  X(fdisk_get_last_lba) \
  X(fdisk_get_label) \
  X(fdisk_get_partitions) \
  X(fdisk_get_sector_size) \
  X(fdisk_has_label) \
  X(fdisk_label_get_name) \
  X(fdisk_label_get_parttype_from_string) \
  X(fdisk_new_context) \
  X(fdisk_new_iter) \
  X(fdisk_new_partition) \
  X(fdisk_partition_end_follow_default) \
  X(fdisk_partition_get_name) \
  X(fdisk_partition_get_end) \
  X(fdisk_partition_get_partno) \
  X(fdisk_partition_get_size) \
  X(fdisk_partition_get_start) \
  X(fdisk_partition_get_type) \
  X(fdisk_partition_has_end) \
  X(fdisk_partition_has_size) \
  X(fdisk_partition_has_start) \
  X(fdisk_partition_set_name) \
  X(fdisk_partition_set_partno) \
  X(fdisk_partition_set_size) \
  X(fdisk_partition_set_start) \
  X(fdisk_partition_set_type) \
  X(fdisk_parttype_get_string) \
  X(fdisk_partition_start_follow_default) \
  X(fdisk_reread_changes) \
  X(fdisk_reread_partition_table) \
  X(fdisk_table_next_partition) \
  X(fdisk_unref_context) \
  X(fdisk_unref_partition) \
  X(fdisk_unref_parttype) \
  X(fdisk_unref_table) \
  X(fdisk_write_disklabel)

struct LibFdisk {
#define X(f) decltype(&::f) f = nullptr;
  CAIRN_FDISK_FUNCTIONS(X)
#undef X
};

Result<LibFdisk> load_libfdisk() {
  auto so = DynamicLibrary::open(kLibFdisk, "partitioning", "install libfdisk1 on the node");
  if (!so) return fail(so.error());
  LibFdisk lib;
  MissingSymbols missing;
#define X(f) so->bind(lib.f, #f, missing);
  CAIRN_FDISK_FUNCTIONS(X)
#undef X
  if (auto ok = missing.check(kLibFdisk, "install libfdisk1 2.36 or later"); !ok) return fail(ok.error());
  return lib;
}
#undef CAIRN_FDISK_FUNCTIONS

// Loaded once per process; a failure is remembered (the node's libraries do not change).
const Result<LibFdisk>& loaded_libfdisk() {
  static const Result<LibFdisk> loaded = load_libfdisk();
  return loaded;
}
// Only after open_context() loaded it (every use of libfdisk goes through a context).
const LibFdisk& lib() { return *loaded_libfdisk(); }

struct ContextDeleter {
  void operator()(fdisk_context* c) const { lib().fdisk_unref_context(c); }
};
struct TableDeleter {
  void operator()(fdisk_table* t) const { lib().fdisk_unref_table(t); }
};
struct IterDeleter {
  void operator()(fdisk_iter* i) const { lib().fdisk_free_iter(i); }
};
struct PartitionDeleter {
  void operator()(fdisk_partition* p) const { lib().fdisk_unref_partition(p); }
};
struct ParttypeDeleter {
  void operator()(fdisk_parttype* t) const { lib().fdisk_unref_parttype(t); }
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
  if (const auto& loaded = loaded_libfdisk(); !loaded) return fail(loaded.error());
  Context cxt(lib().fdisk_new_context());
  if (!cxt) return fail(Errc::internal, "libfdisk: out of memory");
  const auto path = root / disk.host_path.string();
  const int rc = lib().fdisk_assign_device(cxt.get(), path.c_str(), read_only ? 1 : 0);
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


// boot-disk-free (h-userdata) ---------------------------------------------------------------

constexpr std::uint64_t kGrainBytes = 1024 * 1024;  // partitions start on 1 MiB, as fdisk aligns

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Whether partition `p` of `disk` is Cairn's ESP: GPT type EFI System and a FAT32 boot sector
// whose volume label (BPB offset 71, 11 bytes, space-padded; file system type "FAT32   " at 82:
// Microsoft's FAT specification, "FAT32 Boot Sector") is CAIRN-ESP, as image/build's mkfs.fat -n.
bool is_cairn_esp(const Root& root, const Disk& disk, const DiskLayout& layout, const DiskLayout::Part& p) {
  if (layout.label_type != "gpt" || p.type != kEspType) return false;
  UniqueFd fd(::open((root / disk.host_path.string()).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  char sector[512];
  const auto offset = static_cast<off_t>(p.start * layout.sector_size);
  if (::pread(fd.get(), sector, sizeof sector, offset) != static_cast<ssize_t>(sizeof sector)) return false;
  std::string label(kCairnEspLabel);
  label.resize(11, ' ');
  return std::string_view(sector + 82, 8) == "FAT32   " && std::string_view(sector + 71, 11) == label &&
         static_cast<unsigned char>(sector[510]) == 0x55 && static_cast<unsigned char>(sector[511]) == 0xAA;
}

bool has_cairn_esp(const Root& root, const Disk& disk, const DiskLayout& layout) {
  return std::any_of(layout.parts.begin(), layout.parts.end(),
                     [&](const DiskLayout::Part& p) { return is_cairn_esp(root, disk, layout, p); });
}

// The free space after the last partition, up to where the backup GPT of this disk's size
// lies (its header and 16 KiB of entries: UEFI 2.10, 5.3.1), from the disk's size in sysfs, so
// a disk the cloud grew counts all its new space even before the backup GPT is moved.
struct FreeSpace {
  std::uint64_t start = 0;  // first sector, aligned up to the grain
  std::uint64_t size = 0;   // sectors, rounded down to the grain
};
FreeSpace free_space_at_end(const Disk& disk, const DiskLayout& layout) {
  const std::uint64_t sector = layout.sector_size;
  const std::uint64_t grain = std::max<std::uint64_t>(1, kGrainBytes / sector);
  const std::uint64_t backup = 1 + (16384 + sector - 1) / sector;
  const std::uint64_t sectors = disk.size_bytes / sector;
  std::uint64_t last_end = 2047;  // below the first MiB: the protective MBR and primary GPT
  for (const auto& p : layout.parts) last_end = std::max(last_end, p.end);
  const std::uint64_t start = (last_end + 1 + grain - 1) / grain * grain;
  if (sectors < backup + 1 || start > sectors - backup - 1) return {start, 0};
  const std::uint64_t usable = sectors - backup - start;  // sectors from start to the last usable one
  return {start, usable / grain * grain};
}

}  // namespace

Result<DiskRule> parse_disk_rule(std::string_view text) {
  DiskRule r;
  if (text == "largest-empty") return r;
  if (text == "boot-disk-free") return DiskRule{DiskRule::Kind::boot_disk_free, ""};
  const auto colon = text.find(':');
  const std::string kind(text.substr(0, colon));
  const std::string value(colon == std::string_view::npos ? "" : text.substr(colon + 1));
  if (colon != std::string_view::npos && !value.empty()) {
    if (kind == "by-path") return DiskRule{DiskRule::Kind::by_path, value};
    if (kind == "by-id") return DiskRule{DiskRule::Kind::by_id, value};
    if (kind == "device" && value.starts_with("/dev/")) return DiskRule{DiskRule::Kind::device, value};
  }
  return fail(Errc::config, "persist disk rule '" + std::string(text) + "': not understood",
              "use by-path:NAME, by-id:NAME, device:/dev/NAME, largest-empty or boot-disk-free");
}

std::string to_string(const DiskRule& rule) {
  switch (rule.kind) {
    case DiskRule::Kind::by_path: return "by-path:" + rule.value;
    case DiskRule::Kind::by_id: return "by-id:" + rule.value;
    case DiskRule::Kind::device: return "device:" + rule.value;
    case DiskRule::Kind::largest_empty: return "largest-empty";
    case DiskRule::Kind::boot_disk_free: return "boot-disk-free";
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
  if (const char* collision = lib().fdisk_get_collision(cxt->get())) l.signature = collision;
  if (lib().fdisk_has_label(cxt->get()) == 0) return l;
  if (const auto* label = lib().fdisk_get_label(cxt->get(), nullptr)) l.label_type = lib().fdisk_label_get_name(label);
  fdisk_table* raw = nullptr;
  if (lib().fdisk_get_partitions(cxt->get(), &raw) < 0) {
    return fail(Errc::io, "disk " + disk.host_path.string() + ": reading its " + l.label_type + " partition table failed");
  }
  std::unique_ptr<fdisk_table, TableDeleter> table(raw);
  std::unique_ptr<fdisk_iter, IterDeleter> iter(lib().fdisk_new_iter(FDISK_ITER_FORWARD));
  fdisk_partition* pa = nullptr;
  const auto sector = lib().fdisk_get_sector_size(cxt->get());
  l.sector_size = sector;
  while (lib().fdisk_table_next_partition(table.get(), iter.get(), &pa) == 0) {
    DiskLayout::Part p;
    p.number = static_cast<int>(lib().fdisk_partition_get_partno(pa)) + 1;
    if (const char* name = lib().fdisk_partition_get_name(pa)) p.name = name;
    if (lib().fdisk_partition_has_size(pa)) p.size_bytes = lib().fdisk_partition_get_size(pa) * sector;
    if (lib().fdisk_partition_has_start(pa)) p.start = lib().fdisk_partition_get_start(pa);
    if (lib().fdisk_partition_has_end(pa)) p.end = lib().fdisk_partition_get_end(pa);
    if (const auto* type = lib().fdisk_partition_get_type(pa)) {
      if (const char* text = lib().fdisk_parttype_get_string(type)) p.type = upper(text);
    }
    l.parts.push_back(std::move(p));
  }
  return l;
}


namespace {

Result<PersistTarget> choose_boot_disk_free(const Root& root, std::uint64_t min_bytes) {
  auto disks = list_disks(root);
  if (!disks) return fail(disks.error());
  std::vector<std::pair<Disk, DiskLayout>> boot_disks;
  for (const auto& disk : *disks) {
    auto layout = read_layout(root, disk);
    if (!layout || !has_cairn_esp(root, disk, *layout)) continue;
    boot_disks.emplace_back(disk, std::move(*layout));
  }
  if (boot_disks.empty()) {
    return fail(Errc::config,
                "persist disk rule boot-disk-free: no disk holds Cairn's EFI system partition (GPT type EFI System, "
                "FAT label " + std::string(kCairnEspLabel) + ")",
                "this rule is for nodes booted from image/build's disk image; elsewhere use largest-empty or name "
                "the disk (by-path:, by-id:, device:)");
  }
  if (boot_disks.size() > 1) {
    std::string names;
    for (const auto& [d, l] : boot_disks) names += (names.empty() ? "" : ", ") + d.host_path.string();
    return fail(Errc::refused, "persist disk rule boot-disk-free: several disks hold Cairn's EFI partition (" + names +
                                   "): which one booted is not known, none is touched",
                "detach the disks of other Cairn images, or name the disk (by-id:, device:)");
  }
  const auto& [disk, layout] = boot_disks.front();
  if (auto part = layout.cairn_partition()) {
    return PersistTarget{disk, true, part->number, partition_path(disk.name, part->number)};
  }
  if (disk.read_only) {
    return fail(Errc::refused, "disk " + disk.host_path.string() + " is read-only", "boot from a writable disk");
  }
  const auto free = free_space_at_end(disk, layout);
  if (free.size * layout.sector_size < min_bytes) {
    const auto have = free.size * layout.sector_size;
    return fail(Errc::refused,
                "disk " + disk.host_path.string() + " (boot-disk-free) has " + mib(have) +
                    " free after its last partition, at least " + mib(min_bytes) + " needed for /persist: " +
                    mib(min_bytes - have) + " missing",
                "give the instance a larger disk (the cloud grows the image's disk to it), or lower persist "
                "min_size_mib in the agent config");
  }
  int number = 1;
  for (const auto& p : layout.parts) number = std::max(number, p.number + 1);
  PersistTarget t{disk, false, number, partition_path(disk.name, number)};
  t.in_free_space = true;
  t.start = free.start;
  t.size = free.size;
  return t;
}

// Adds the cairn-persist partition in the free space of a boot disk, nothing else changed.
Status add_partition_in_free_space(const Root& root, const PersistTarget& target) {
  const std::string where = "disk " + target.disk.host_path.string();
  auto layout = read_layout(root, target.disk);
  if (!layout) return fail(layout.error());
  if (!has_cairn_esp(root, target.disk, *layout) || layout->cairn_partition()) {
    return fail(Errc::refused, where + " changed since it was chosen (" + describe_layout(*layout) + "): left alone");
  }
  for (const auto& p : layout->parts) {
    if (p.number == target.partition_number || p.end >= target.start) {
      return fail(Errc::refused, where + ": partition " + std::to_string(p.number) +
                                     " lies where /persist was to go: left alone");
    }
  }
  auto cxt = open_context(root, target.disk, false);
  if (!cxt) return fail(cxt.error());
  // On a disk the cloud grew, opening it read-write moves the backup GPT to the new end and
  // extends the usable area (libfdisk does this unless relocation is disabled): the space
  // after the last partition is then addressable. The entries of other partitions stay as
  // they were.
  if (lib().fdisk_get_last_lba(cxt->get()) < target.start + target.size - 1) {
    return fail(Errc::io, where + ": the partition table ends at sector " +
                              std::to_string(lib().fdisk_get_last_lba(cxt->get())) + ", before the free space (" +
                              std::to_string(target.start + target.size - 1) + ")",
                "fix the backup GPT with `sgdisk -e " + target.disk.host_path.string() + "` and boot again");
  }
  fdisk_table* raw_before = nullptr;
  if (lib().fdisk_get_partitions(cxt->get(), &raw_before) < 0) {
    return fail(Errc::io, where + ": reading its partition table failed");
  }
  std::unique_ptr<fdisk_table, TableDeleter> before(raw_before);
  std::unique_ptr<fdisk_partition, PartitionDeleter> pa(lib().fdisk_new_partition());
  std::unique_ptr<fdisk_parttype, ParttypeDeleter> type(
      lib().fdisk_label_get_parttype_from_string(lib().fdisk_get_label(cxt->get(), nullptr), kLinuxFsType));
  if (!pa || !type) return fail(Errc::internal, "libfdisk: out of memory");
  lib().fdisk_partition_set_partno(pa.get(), static_cast<std::size_t>(target.partition_number - 1));
  lib().fdisk_partition_set_start(pa.get(), target.start);
  lib().fdisk_partition_set_size(pa.get(), target.size);
  lib().fdisk_partition_set_name(pa.get(), std::string(kPartitionLabel).c_str());
  lib().fdisk_partition_set_type(pa.get(), type.get());
  if (int rc = lib().fdisk_add_partition(cxt->get(), pa.get(), nullptr); rc < 0) {
    return fail(Errc::io, where + ": adding the cairn-persist partition in the free space: " + std::strerror(-rc));
  }
  if (int rc = lib().fdisk_write_disklabel(cxt->get()); rc < 0) {
    return fail(Errc::io, where + ": writing the partition table: " + std::strerror(-rc));
  }
  // BLKRRPART fails while a partition of the disk is in use (the ESP mounted); then tell the
  // kernel of the one new partition alone (BLKPG, as fdisk(8) does). A failure of both is left
  // to wait_for_device, whose hint is partprobe.
  if (lib().fdisk_reread_partition_table(cxt->get()) < 0) (void)lib().fdisk_reread_changes(cxt->get(), before.get());
  if (int rc = lib().fdisk_deassign_device(cxt->get(), 0); rc < 0) {
    return fail(Errc::io, where + ": closing after writing the partition table: " + std::strerror(-rc));
  }
  return {};
}

}  // namespace

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

  if (rule.kind == DiskRule::Kind::boot_disk_free) return choose_boot_disk_free(root, min_bytes);
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
  if (target.in_free_space) return add_partition_in_free_space(root, target);
  auto layout = read_layout(root, target.disk);
  if (!layout) return fail(layout.error());
  if (!layout->empty()) {
    return fail(Errc::refused, "disk " + target.disk.host_path.string() + " is no longer empty (" +
                                   describe_layout(*layout) + "): left alone");
  }
  auto cxt = open_context(root, target.disk, false);
  if (!cxt) return fail(cxt.error());
  const std::string where = "disk " + target.disk.host_path.string();
  if (lib().fdisk_create_disklabel(cxt->get(), "gpt") < 0) return fail(Errc::io, where + ": creating a GPT failed");
  std::unique_ptr<fdisk_partition, PartitionDeleter> pa(lib().fdisk_new_partition());
  std::unique_ptr<fdisk_parttype, ParttypeDeleter> type(
      lib().fdisk_label_get_parttype_from_string(lib().fdisk_get_label(cxt->get(), nullptr), kLinuxFsType));
  if (!pa || !type) return fail(Errc::internal, "libfdisk: out of memory");
  lib().fdisk_partition_set_partno(pa.get(), 0);
  lib().fdisk_partition_start_follow_default(pa.get(), 1);
  lib().fdisk_partition_end_follow_default(pa.get(), 1);
  lib().fdisk_partition_set_name(pa.get(), std::string(kPartitionLabel).c_str());
  lib().fdisk_partition_set_type(pa.get(), type.get());
  if (int rc = lib().fdisk_add_partition(cxt->get(), pa.get(), nullptr); rc < 0) {
    return fail(Errc::io, where + ": adding the cairn-persist partition: " + std::strerror(-rc));
  }
  if (int rc = lib().fdisk_write_disklabel(cxt->get()); rc < 0) {
    return fail(Errc::io, where + ": writing the partition table: " + std::strerror(-rc));
  }
  // The kernel learns of the new partition only when asked (BLKRRPART, as fdisk(8) does after
  // writing; deassigning only syncs, seen in the VM: /dev/vda1 never appeared). A no-op for an
  // image file. A failure (device busy) is left to wait_for_device, whose hint is partprobe.
  (void)lib().fdisk_reread_partition_table(cxt->get());
  // For a block device, deassigning syncs.
  if (int rc = lib().fdisk_deassign_device(cxt->get(), 0); rc < 0) {
    return fail(Errc::io, where + ": closing after writing the partition table: " + std::strerror(-rc));
  }
  return {};
}

}  // namespace cairn::agent::persist
