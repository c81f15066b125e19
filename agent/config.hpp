// The agent's configuration: defaults, then the config file, then flags (later wins).
// Config file: JSON, `--config FILE`, default <root>/etc/cairn/agent.json (absent = defaults):
//   {"persist_dir": "/persist", "control_url": "https://...", "ca_file": "...",
//    "ca_fingerprint": "<sha256 hex of the CA cert>", "token_file": "...", "labels": {"rack": "r1"},
//    "identity": { see identity::config_from_json }}
// Paths in the config file (persist_dir, ca_file, token_file) are host paths: an absolute one is
// resolved through --root like every host path, a relative one is relative to the directory of
// the config file. Paths given as flags (--ca, --persist, --config) are taken as they are.
// The heartbeat interval is not configured here: the control service sets it in every answer.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "identity/cascade.hpp"

namespace cairn::agent {

// Options every subcommand takes (added to the top-level app, so they go before or after
// the subcommand name).
struct GlobalOptions {
  std::string root = "/";                  // --root DIR: host root for /proc, /sys, /persist
  std::string config;                      // --config FILE
  std::string persist_dir;                 // --persist DIR (default <root>/persist)
  std::string control_url;                 // --control URL
  std::string ca_file;                     // --ca FILE
  std::string ca_fingerprint;              // --ca-fingerprint SHA256
  std::vector<std::string> metadata_urls;  // --metadata-url SOURCE=URL (repeatable)
  std::vector<std::string> clouds;         // --cloud NAME: probe this cloud without a DMI hint
  bool json = false;                       // --json
  bool verbose = false;                    // -v/--verbose: debug events (every heartbeat)
};
void add_global_options(CLI::App& app, GlobalOptions& options);

// persist (issue 15): the /persist volume. Config file section "persist":
//   {"disk": "largest-empty" | "by-path:NAME" | "by-id:NAME" | "device:/dev/NAME",
//    "min_size_mib": 1024, "pcrs": [7], "key_source": "tpm" | "escrow",
//    "tcti": "device:/dev/tpmrm0", "mapper_name": "cairn-persist"}
// key_source is explicit: "escrow" (the control service keeps the key) is used only when set,
// never as a fallback when the TPM is missing.
struct PersistConfig {
  std::string disk = "largest-empty";
  std::uint64_t min_size_mib = 1024;
  std::vector<int> pcrs{7};
  std::string key_source = "tpm";
  std::string tcti = "device:/dev/tpmrm0";
  std::string mapper_name = "cairn-persist";
  // h-userdata: the config file named the disk rule (it then wins over cairn.disk= of the boot).
  bool disk_configured = false;
  // The config file named the PCRs (it then wins over cairn.pcrs= of the boot artifact).
  bool pcrs_configured = false;
};

// A PCR list as the kernel command line gives it (systemd's spelling "7+8+9", or "7,8,9"):
// indices 0-23 of the sha256 bank, returned sorted and without repeats.
Result<std::vector<int>> parse_pcr_list(std::string_view text);

struct AgentConfig {
  Root root;
  std::filesystem::path persist_dir;  // the persist root; the agent's files are under cairn/
  std::string control_url;
  std::filesystem::path ca_file;      // pins the control service's CA
  std::string ca_fingerprint;         // or: SHA-256 of the CA cert (`cairn-control init` prints it)
  std::filesystem::path token_file;   // bootstrap token (default <persist>/cairn/bootstrap-token)
  std::map<std::string, std::string> labels;
  identity::Config identity;
  PersistConfig persist;  // persist (issue 15)

  // tasks (issue 13, h-atasks): the "tasks" section of agent.json,
  //   {"max_concurrent": 2, "exec_allowlist": ["/usr/bin/uptime"], "stop_timeout_s": 20,
  //    "services_dir": "/var/lib/cairn/services"}
  // exec_allowlist empty: any command; otherwise argv[0] must equal one entry. Only this file
  // sets it: nothing a task carries can widen it.
  std::size_t max_concurrent_tasks = 2;
  std::vector<std::string> exec_allowlist;
  // SIGTERM: running tasks get this long to finish; under the unit's TimeoutStopSec=30s with
  // room for the kill grace (5 s), the completions and the event flush.
  std::chrono::seconds task_stop_timeout{20};
  std::string services_dir = "/var/lib/cairn/services";  // a host path (used through root)
  // "allow_root_services": service.install may run a service as root (default false: a root
  // service escapes every sandbox, so only the node's own configuration can allow it).
  bool allow_root_services = false;
  // modules (issue 14), config file section "modules": {"registry": "HOST[:PORT]/PREFIX",
  // "plain_http": false, "credentials_file": "...", "trust": {"NAME"|"*": ["key.pub", ...]},
  // "union": "/run/cairn/union", "upper": "tmpfs"|"persist", "run_dir": "/run/cairn/modules"}
  std::string module_registry;                        // NAME:VERSION is fetched from HOST/PREFIX/NAME:VERSION
  bool module_registry_plain_http = false;            // http://, only for a registry on loopback
  std::filesystem::path module_registry_credentials;  // JSON {"username", "password"}, 0600
  Json module_trust = nullptr;                        // the trust policy (agent/modules/verify.hpp)
  std::filesystem::path module_config_file;           // resolves the policy's relative key paths
  std::filesystem::path module_union;                 // union mount point (default <root>/run/cairn/union)
  std::string module_upper = "tmpfs";                 // upper layer: tmpfs (ephemeral) or persist
  std::filesystem::path module_run_dir;               // layer mounts, staging (default <root>/run/cairn/modules)
  // modules (h-modpolicy): "policy_keys": ["keys/policy.pub", ...], the keys a trust policy
  // distributed by control must be signed with (agent/modules/policy.hpp). None: ignored.
  Json module_policy_keys = nullptr;
  // modules (h-polexpiry): "policy_require_expiry": true|false (default false). true: a
  // distributed policy without "expires" is refused, and an accepted one without it no longer
  // widens trust. For diskless fleets, whose nodes forget the accepted version at every boot:
  // the expiry is then what keeps an old signed policy from being replayed to them.
  bool module_policy_require_expiry = false;
  // modules (h-apply): "auto_apply": true|false. true (default): `cairn-agent service` applies
  // each new desired set of a heartbeat reply by itself (agent/runtime/module_reconciler.hpp);
  // false: it only stores the set, applied when an operator runs `cairn-agent update`.
  bool module_auto_apply = true;
  std::string module_auto_apply_source = "default";  // for `config --explain`

  [[nodiscard]] std::filesystem::path state_dir() const { return persist_dir / "cairn"; }
};

Result<AgentConfig> load_agent_config(const GlobalOptions& options);

// A path value of the config file `config_file` as a host path: absolute -> root / value,
// relative -> next to the config file; empty stays empty (unset).
std::filesystem::path config_file_path(const Root& root, const std::filesystem::path& config_file,
                                       std::string_view value);

}  // namespace cairn::agent
