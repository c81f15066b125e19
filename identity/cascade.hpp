// PLACEHOLDER — the identity work replaces this file (keeps the names used by agent/config).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"
#include "common/root.hpp"

namespace cairn::identity {

struct Config {
  Root root;
  std::filesystem::path persist_dir;               // identity.json lives in <persist_dir>/cairn/
  std::map<std::string, std::string> base_urls;    // source name ("aws", "gcp", ...) -> base URL
  std::vector<std::string> forced_clouds;          // probe these without a DMI hint
};

// Reads the "identity" section of agent.json on top of `defaults`.
Result<Config> config_from_json(const Json& section, Config defaults);

}  // namespace cairn::identity
