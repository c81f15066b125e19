// Which disk holds /persist, and its GPT partition labelled "cairn-persist". The disk is chosen
// by a configured rule, every path through Root (/sys/block, /dev/disk/by-*, /dev/<name>):
//   "by-path:<name>"  /dev/disk/by-path/<name>
//   "by-id:<name>"    /dev/disk/by-id/<name>
//   "device:<path>"   a device node, e.g. device:/dev/vdb
//   "largest-empty"   the disk already holding a cairn-persist partition, else the largest disk
//                     with no partition table, no partitions and no filesystem signature
//   "boot-disk-free"  the disk Cairn booted from (a cloud instance's one disk): the one whose
//                     GPT holds Cairn's EFI system partition (type EFI System, FAT32 volume
//                     label CAIRN-ESP, as image/build writes it); /persist is a new partition
//                     in the unallocated space after its last partition (the cloud grew the
//                     disk to the instance's size). Existing partitions are never moved or
//                     touched; only a new GPT entry is written (and the backup GPT moved to the
//                     end of a grown disk, as fdisk does). h-userdata
// The partition table is read and written with libfdisk (util-linux), only in disk.cpp.
// A disk with partitions that are not Cairn's is left alone: an error, never repartitioned.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/root.hpp"

namespace cairn::agent::persist {

inline constexpr std::string_view kPartitionLabel = "cairn-persist";

struct DiskRule {
  enum class Kind { by_path, by_id, device, largest_empty, boot_disk_free };
  Kind kind = Kind::largest_empty;
  std::string value;  // the name or path (empty for largest_empty)
};
Result<DiskRule> parse_disk_rule(std::string_view text);
std::string to_string(const DiskRule& rule);

struct Disk {
  std::string name;                // kernel name: "sda", "nvme0n1"
  std::filesystem::path host_path; // "/dev/sda" (a host path: open it as root / host_path)
  std::uint64_t size_bytes = 0;
  bool read_only = false;
  std::vector<std::string> partitions;  // kernel names of its partitions (sysfs)
};

// What is on a disk, read with libfdisk.
struct DiskLayout {
  std::string label_type;  // "gpt", "dos", ... ; empty: no partition table
  std::string signature;   // a filesystem/RAID/LUKS signature on the whole disk; empty: none
  struct Part {
    int number = 0;  // 1-based, as the kernel names it
    std::string name;
    std::uint64_t size_bytes = 0;
    std::uint64_t start = 0;  // first and last sector (boot-disk-free, h-userdata)
    std::uint64_t end = 0;
    std::string type;         // partition type: a GUID in upper case for GPT
  };
  std::vector<Part> parts;
  std::uint64_t sector_size = 512;
  [[nodiscard]] std::optional<Part> cairn_partition() const;
  [[nodiscard]] bool empty() const { return label_type.empty() && signature.empty() && parts.empty(); }
};

// The partition holding /persist: existing (later boots) or to create (first boot).
struct PersistTarget {
  Disk disk;
  bool exists = false;
  int partition_number = 1;
  std::filesystem::path partition_host_path;  // "/dev/sda1", "/dev/nvme0n1p1"
  // boot-disk-free (h-userdata): the new partition goes in the free space after the disk's
  // partitions, from `start` for `size` sectors, beside the partitions already there.
  bool in_free_space = false;
  std::uint64_t start = 0;
  std::uint64_t size = 0;
};

// GPT type of an EFI system partition, and the FAT volume label image/build gives Cairn's.
inline constexpr std::string_view kEspType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
inline constexpr std::string_view kCairnEspLabel = "CAIRN-ESP";

// Every disk the kernel lists under /sys/block, without loop, ram, zram, device-mapper,
// optical and floppy devices.
Result<std::vector<Disk>> list_disks(const Root& root);
Result<DiskLayout> read_layout(const Root& root, const Disk& disk);

// Applies the rule. Errors: a named disk missing (Errc::config), a disk with other partitions
// (Errc::refused, left alone), a disk smaller than min_bytes (Errc::refused), no empty disk.
Result<PersistTarget> choose_target(const Root& root, const DiskRule& rule, std::uint64_t min_bytes);

// Writes a GPT with one partition over the whole disk, named cairn-persist (type Linux
// filesystem), and asks the kernel to re-read the table. Refuses a disk that is not empty.
// For a boot-disk-free target: adds the partition in the free space, after checking again
// that the table is as choose_target saw it (Cairn's ESP there, the space still free).
Status create_partition(const Root& root, const PersistTarget& target);

std::filesystem::path partition_path(const std::string& disk_name, int number);

}  // namespace cairn::agent::persist
