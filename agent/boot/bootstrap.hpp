// Bootstrap configuration of a booting node: what it needs before it has any state (the
// control URL, the CA fingerprint, the bootstrap token, the persist mode). One image serves
// every customer: the values come from the kernel command line
//   cairn.control=https://HOST:PORT cairn.ca=<sha256 hex> cairn.token=<token> cairn.persist=tmpfs|disk
// or from QEMU's fw-cfg entry opt/org.cairn/config, a JSON object
//   {"control_url": "...", "ca_fingerprint": "...", "token": "...", "persist": "tmpfs"|"disk"}
// The kernel command line wins over fw-cfg; the agent's config file and flags win over both.
// The token is secret: it is never logged and never written to disk by the boot.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "common/result.hpp"
#include "common/root.hpp"

namespace cairn::agent::boot {

inline constexpr std::string_view kCmdlineSource = "kernel command line";
inline constexpr std::string_view kFwCfgSource = "fw-cfg opt/org.cairn/config";
inline constexpr std::string_view kFwCfgConfigPath = "sys/firmware/qemu_fw_cfg/by_name/opt/org.cairn/config/raw";
inline constexpr std::size_t kMaxCmdlineBytes = 4096;
inline constexpr std::size_t kMaxFwCfgConfigBytes = 64 * 1024;

struct Value {
  std::string value;
  std::string source;  // kCmdlineSource, kFwCfgSource, "config file or flag", "default"
};

struct Bootstrap {
  std::optional<Value> control_url;
  std::optional<Value> ca_fingerprint;
  std::optional<Value> token;
  std::optional<Value> persist;  // "tmpfs" (diskless) or "disk"
};

// The cairn.* words of a kernel command line; other words are ignored. A cairn.* key this
// version does not know is an error naming it (a typo must not boot with a default).
Result<Bootstrap> parse_kernel_cmdline(std::string_view cmdline);
// The JSON document of the fw-cfg entry.
Result<Bootstrap> parse_fw_cfg_config(std::string_view json);
// `high` where it has a value, else `low`.
Bootstrap merge(Bootstrap high, const Bootstrap& low);
// Reads <root>/proc/cmdline and the fw-cfg entry (absent: nothing from it) and merges them.
Result<Bootstrap> read_bootstrap(const Root& root);

// Fills the fields of `config` the config file and flags left empty; what was set there
// keeps its value and is reported as such in the returned Bootstrap.
Bootstrap apply(AgentConfig& config, const Bootstrap& bootstrap);

}  // namespace cairn::agent::boot
