// What a heartbeat reports about the machine, read through Root from /proc and statvfs.
#pragma once

#include <filesystem>

#include "common/protocol/messages.hpp"
#include "common/root.hpp"

namespace cairn::agent {

// Fills boot id, load, cpu count, memory, uptime and the disk of `disk_path` into hb.
// A value that cannot be read stays 0; the heartbeat is still worth sending.
void collect_system_stats(const Root& root, const std::filesystem::path& disk_path,
                          protocol::HeartbeatRequest& hb);

}  // namespace cairn::agent
