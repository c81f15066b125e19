// The /persist volume's flows: first boot (choose the disk, partition, make and seal a key,
// format LUKS2 with the sealed key in a token, mkfs.ext4 with verity, mount) and every later
// boot (unseal, activate, fsck, mount); add-recovery and reseal for the operator.
// All decisions live here, behind Tpm, BlockCrypt, EscrowSource and VolumeHost, so they are
// unit-tested with fakes. The rule above all: a volume that fails to unlock is never
// reformatted; the flow reports a critical event with the measured PCR values and stops until
// an operator decides (`persist reseal` after recovery, or `volume-setup --wipe`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/persist/disk.hpp"
#include "agent/persist/luks.hpp"
#include "agent/persist/tpm.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::agent::persist {

// Where the volume key comes from: the TPM, or (no TPM, explicit configuration only) a key the
// control service escrows for this node. Never a silent fallback from one to the other.
enum class KeySource { tpm, escrow };
std::string_view key_source_name(KeySource source);

struct VolumeConfig {
  DiskRule disk;
  std::uint64_t min_bytes = 1024ull * 1024 * 1024;
  PcrPolicy policy;
  KeySource key_source = KeySource::tpm;
  std::string node_id;                       // escrow: recorded in the token
  std::string mapper_name = "cairn-persist";  // /dev/mapper/<name>
  std::filesystem::path mount_point;          // the persist root (a host path)
};

// The escrowed key of this node, fetched from the control service over mTLS (created there on
// the first call). Errc::unavailable when control does not answer.
class EscrowSource {
 public:
  virtual ~EscrowSource() = default;
  virtual Result<Secret> fetch() = 0;
};

// The host operations the flow needs (real: host.cpp; tests: a fake).
class VolumeHost {
 public:
  virtual ~VolumeHost() = default;
  virtual Result<PersistTarget> locate(const DiskRule& rule, std::uint64_t min_bytes) = 0;
  virtual Status partition(const PersistTarget& target) = 0;
  virtual Status wait_for_device(const std::filesystem::path& host_path) = 0;
  // What the device holds: a filesystem, RAID or other signature, or non-zero data; empty: blank.
  virtual Result<std::string> signature(const std::filesystem::path& host_path) = 0;
  virtual bool device_mapper_available() = 0;
  virtual Status make_filesystem(const std::filesystem::path& host_path) = 0;  // mkfs.ext4 -b 4096 -O verity
  virtual Status check_filesystem(const std::filesystem::path& host_path) = 0;  // e2fsck -p
  virtual Status mount(const std::filesystem::path& host_path, const std::filesystem::path& mount_point) = 0;
  virtual Result<bool> is_mounted(const std::filesystem::path& mount_point) = 0;
  // The LUKS/partition device as the BlockCrypt opens it (root / host path).
  virtual std::filesystem::path resolve(const std::filesystem::path& host_path) = 0;
};

struct VolumeDeps {
  Tpm* tpm = nullptr;              // key_source tpm
  EscrowSource* escrow = nullptr;  // key_source escrow
  BlockCrypt* crypt = nullptr;
  VolumeHost* host = nullptr;
  // Receives the critical event of an unlock failure (the CLI logs it and keeps it for the
  // service to send).
  std::function<void(const protocol::Event&)> critical;
  std::function<std::string()> now_rfc3339;
};

struct VolumeOutcome {
  // resumed: the mapping was open but not mounted (an earlier run stopped before mounting);
  // the run continued from there (fsck, mount) without unsealing again.
  enum class Action { formatted, opened, already_mounted, resumed };
  Action action = Action::opened;
  PersistTarget target;
  int keyslot = -1;
  std::vector<std::string> steps;  // what was done, for the human output
  Json details = Json::object();
  // What the key is bound to, when this run unsealed or sealed it: "TPM PCR 4+7+8+9 sha256"
  // (the volume token's PCRs) or "escrow key"; empty when no key was needed.
  std::string key_binding;
};
std::string_view action_name(VolumeOutcome::Action action);
std::string key_binding(KeySource source, const PcrPolicy& policy);

// First boot or later boot, whichever the disk shows.
Result<VolumeOutcome> open_volume(const VolumeConfig& config, VolumeDeps& deps);

// `volume-setup --wipe --yes-destroy-data`: formats the existing cairn-persist partition anew
// (all data lost), then continues as a first boot.
Result<VolumeOutcome> wipe_and_create(const VolumeConfig& config, VolumeDeps& deps);

// A recovery key: 32 random bytes shown as 8 groups of 8 hex digits. The keyslot passphrase
// is the key without dashes or spaces, lower case, so the operator may type it either way.
struct RecoveryKey {
  std::string display;  // shown once
};
Result<RecoveryKey> make_recovery_key();
Secret recovery_passphrase(std::string_view typed);

// `persist add-recovery`: opens with the configured key source, adds a recovery keyslot and a
// cairn-recovery token. Refused when a recovery key exists.
Result<RecoveryKey> add_recovery(const VolumeConfig& config, VolumeDeps& deps);

// `persist reseal`: checks the recovery key, seals a new key to the PCRs as they are now,
// adds its keyslot, replaces the cairn-tpm2 token, then removes the old TPM keyslot.
Result<int> reseal(const VolumeConfig& config, VolumeDeps& deps, const Secret& recovery);

}  // namespace cairn::agent::persist
