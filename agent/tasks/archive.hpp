// Safe extraction of a service archive (tar, optionally compressed, or zip) with libarchive,
// loaded with dlopen on first use (Errc::unavailable on a node without it, such as the initramfs):
// the only file that speaks libarchive. Every entry is checked before anything is written:
// no absolute path, no `..`, no device, FIFO or socket, no write through a symlink, links
// (sym and hard) must resolve inside the destination, and caps on entries, total size and the
// expansion ratio refuse an archive bomb while it is being read (sizes are counted as written,
// never taken from headers).
#pragma once

#include <cstdint>
#include <filesystem>

#include "common/result.hpp"

namespace cairn::agent::tasks {

struct ArchiveLimits {
  std::uint64_t max_entries = 20000;
  std::uint64_t max_total_bytes = 2ull << 30;  // unpacked
  std::uint64_t max_ratio = 200;               // unpacked / packed, once past 1 MiB unpacked
};

struct ExtractStats {
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;  // unpacked file bytes written
};

// Extracts `archive` into `dest`, a directory that must not exist yet (created 0755). On any
// error what was written is left for the caller to remove (it unpacks into a temp dir).
// Errc::data names the entry at fault.
Result<ExtractStats> extract_archive(const std::filesystem::path& archive, const std::filesystem::path& dest,
                                     const ArchiveLimits& limits = {});

}  // namespace cairn::agent::tasks
