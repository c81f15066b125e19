// Bounded reads and atomic writes of small state files (STYLE.md 11).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn {

// Reads at most max_bytes; a longer file is an error (Errc::data), never silently cut.
Result<std::string> read_file(const std::filesystem::path& path, std::size_t max_bytes);

// Like read_file, but a missing file (ENOENT, ENOTDIR) is std::nullopt, not an error.
Result<std::optional<std::string>> read_file_if_exists(const std::filesystem::path& path,
                                                       std::size_t max_bytes);

// Temp file in the same directory, write, fsync, rename over path, fsync the directory.
// Readers see the old content or the new one, never a mix. Creates missing parents (0755).
Status write_file_atomic(const std::filesystem::path& path, std::string_view data,
                         mode_t mode = 0644);

// fsync(2) of a directory, so a rename or link inside it survives a crash.
Status fsync_dir(const std::filesystem::path& dir);

// Creates dir and its parents with the given mode; an existing directory is fine.
Status make_dirs(const std::filesystem::path& dir, mode_t mode = 0755);

}  // namespace cairn
