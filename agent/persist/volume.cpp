#include "agent/persist/volume.hpp"

#include <algorithm>
#include <cctype>

#include "agent/persist/token.hpp"
#include "common/crypto.hpp"

namespace cairn::agent::persist {
namespace {

constexpr std::string_view kOperatorHint =
    "the volume was not reformatted; after recovery run `cairn-agent persist reseal` (it asks for the recovery "
    "key), or discard the data with `cairn-agent volume-setup --wipe --yes-destroy-data`";

std::filesystem::path mapper_path(const VolumeConfig& config) { return "/dev/mapper/" + config.mapper_name; }

Status check_deps(const VolumeConfig& config, const VolumeDeps& deps) {
  if (deps.crypt == nullptr || deps.host == nullptr) return fail(Errc::internal, "persist: no BlockCrypt or host");
  if (config.key_source == KeySource::tpm && deps.tpm == nullptr) {
    return fail(Errc::internal, "persist: key source tpm without a TPM");
  }
  if (config.key_source == KeySource::escrow && deps.escrow == nullptr) {
    return fail(Errc::internal, "persist: key source escrow without an escrow client");
  }
  return {};
}

std::string pcr_values_text(const std::vector<PcrValue>& values) {
  std::string out;
  for (const auto& v : values) out += (out.empty() ? "" : ", ") + std::to_string(v.index) + "=" + v.sha256_hex;
  return out;
}

// The unlock failed: the data stays as it is. One critical event per episode (its id is
// derived from the volume and the cause, so every boot of the same failure reports the same
// id), then a refusal that names what an operator can do.
Error unlock_failed(const VolumeConfig& config, VolumeDeps& deps, const std::filesystem::path& device,
                    const std::string& luks_uuid, const Error& cause, const PcrPolicy& policy) {
  std::string measured;
  Json pcrs = Json::object();
  if (config.key_source == KeySource::tpm && deps.tpm != nullptr) {
    if (auto values = deps.tpm->read_pcrs(policy)) {
      measured = pcr_values_text(*values);
      for (const auto& v : *values) pcrs[std::to_string(v.index)] = v.sha256_hex;
    } else {
      measured = "unreadable (" + values.error().message + ")";
    }
  }
  const std::string message = "persist volume " + device.string() + (luks_uuid.empty() ? "" : " (LUKS " + luks_uuid + ")") +
                              " did not unlock: " + cause.message +
                              // The TPM's own refusal (PCRs changed) names the values already.
                              (measured.empty() || cause.message.find("measured now: ") != std::string::npos
                                   ? ""
                                   : "; measured PCRs (sha256): " + measured) +
                              "; not reformatted, waiting for an operator";
  if (deps.critical) {
    protocol::Event event;
    event.id = "persist.unlock_failed-" + sha256_hex(luks_uuid + "\n" + cause.message + "\n" + measured).substr(0, 16);
    event.severity = "critical";
    event.kind = "persist.unlock_failed";
    event.message = message;
    event.time = deps.now_rfc3339 ? deps.now_rfc3339() : std::string{};
    deps.critical(event);
  }
  return Error{Errc::refused, message, std::string(kOperatorHint)};
}

Result<Secret> fresh_key(const VolumeConfig& config, VolumeDeps& deps) {
  if (config.key_source == KeySource::tpm) return random_secret(32);
  auto key = deps.escrow->fetch();
  if (!key) return fail(key.error().with_context("escrow key"));
  return key;
}

Status activate_and_mount(const VolumeConfig& config, VolumeDeps& deps, const std::filesystem::path& device,
                          const Secret& passphrase, bool fresh, VolumeOutcome& out) {
  if (!deps.host->device_mapper_available()) {
    return fail(Errc::unavailable,
                "device-mapper is not available in this kernel (no /dev/mapper/control): " + device.string() +
                    " cannot be activated",
                "boot a kernel with dm-crypt (CONFIG_DM_CRYPT), or load it: modprobe dm_crypt");
  }
  if (auto ok = deps.crypt->activate(device, config.mapper_name, passphrase); !ok) return fail(ok.error());
  const auto mapped = mapper_path(config);
  out.steps.push_back("activated " + mapped.string());
  if (fresh) {
    if (auto ok = deps.host->make_filesystem(mapped); !ok) return fail(ok.error());
    out.steps.push_back("created ext4 (4 KiB blocks, verity) on " + mapped.string());
  } else {
    if (auto ok = deps.host->check_filesystem(mapped); !ok) return fail(ok.error());
    out.steps.push_back("checked the filesystem on " + mapped.string());
  }
  if (auto ok = deps.host->mount(mapped, config.mount_point); !ok) return fail(ok.error());
  out.steps.push_back("mounted at " + config.mount_point.string());
  return {};
}

Result<VolumeOutcome> format_and_mount(const VolumeConfig& config, VolumeDeps& deps, const PersistTarget& target,
                                       VolumeOutcome out) {
  const auto device = deps.host->resolve(target.partition_host_path);
  auto key = fresh_key(config, deps);
  if (!key) return fail(key.error());
  std::string token;
  std::optional<SealedKey> sealed;
  // Seal before formatting: a TPM that cannot seal leaves the partition untouched.
  if (config.key_source == KeySource::tpm) {
    auto s = deps.tpm->seal(*key, config.policy);
    if (!s) return fail(s.error().with_context("sealing the volume key"));
    sealed = std::move(*s);
    out.steps.push_back("sealed a new key to the TPM (PCR " + pcr_list(config.policy.pcrs) + ", " +
                        config.policy.bank + ")");
    out.key_binding = key_binding(config.key_source, config.policy);
  } else {
    out.steps.push_back("fetched the escrow key from the control service");
    out.key_binding = key_binding(config.key_source, config.policy);
  }
  const Secret passphrase = passphrase_of(*key);
  auto keyslot = deps.crypt->format(device, passphrase, std::string(kPartitionLabel));
  if (!keyslot) return fail(keyslot.error());
  out.keyslot = *keyslot;
  token = sealed ? encode_tpm_token(TpmToken{*keyslot, *sealed})
                 : encode_escrow_token(EscrowToken{*keyslot, config.node_id});
  if (auto id = deps.crypt->set_token(device, token, std::nullopt); !id) return fail(id.error());
  out.steps.push_back("formatted LUKS2 on " + target.partition_host_path.string() + " (keyslot " +
                      std::to_string(*keyslot) + ", token " +
                      std::string(sealed ? kTpmTokenType : kEscrowTokenType) + ")");
  out.action = VolumeOutcome::Action::formatted;
  if (auto ok = activate_and_mount(config, deps, device, passphrase, true, out); !ok) return fail(ok.error());
  return out;
}

// The passphrase of the configured key source for this header, or the reason it cannot be had.
// unlock_failure is set when the volume itself refuses (no or a damaged token, a TPM that will
// not unseal it): the caller reports those as unlock failures. A control service that does not
// hand out the escrow key (down, or refusing this node's certificate) is not one.
struct Opening {
  Secret passphrase;
};
// `policy`: the PCRs the volume's token names (the config's until the token is read), so a
// failure reports the values of the PCRs the key is really bound to.
Result<Opening> opening_key(const VolumeConfig& config, VolumeDeps& deps, const LuksHeader& header,
                            bool& unlock_failure, PcrPolicy& policy) {
  unlock_failure = false;
  Opening o;
  policy = config.policy;
  if (config.key_source == KeySource::tpm) {
    auto token = find_token(header, kTpmTokenType);
    if (!token) {
      if (find_token(header, kEscrowTokenType)) {
        return fail(Errc::config, "the volume is opened by an escrow key (token cairn-escrow), the config says tpm",
                    "set persist key_source to escrow in the agent config (a TPM is never tried in its place)");
      }
      unlock_failure = true;
      return fail(Errc::refused, "the LUKS2 header has no cairn-tpm2 token");
    }
    auto decoded = decode_tpm_token(*token);
    if (!decoded) {
      unlock_failure = true;
      return fail(Errc::refused, decoded.error().message);
    }
    policy = decoded->sealed.policy;
    auto secret = deps.tpm->unseal(decoded->sealed);
    if (!secret) {
      const auto& e = secret.error();
      if (e.code == Errc::refused || e.code == Errc::data) {
        unlock_failure = true;
        return fail(Errc::refused, e.message);
      }
      return fail(e);
    }
    o.passphrase = passphrase_of(*secret);
    return o;
  }
  if (!find_token(header, kEscrowTokenType)) {
    if (find_token(header, kTpmTokenType)) {
      return fail(Errc::config, "the volume is opened by the TPM (token cairn-tpm2), the config says escrow",
                  "set persist key_source to tpm in the agent config (escrow is never tried in its place)");
    }
    unlock_failure = true;
    return fail(Errc::refused, "the LUKS2 header has no cairn-escrow token");
  }
  auto secret = deps.escrow->fetch();
  if (!secret) return fail(secret.error().with_context("escrow key"));
  o.passphrase = passphrase_of(*secret);
  return o;
}

Result<VolumeOutcome> open_existing(const VolumeConfig& config, VolumeDeps& deps, const PersistTarget& target,
                                    VolumeOutcome out) {
  const auto device = deps.host->resolve(target.partition_host_path);
  auto header = deps.crypt->inspect(device);
  if (!header) return fail(header.error());
  switch (header->state) {
    case LuksHeader::State::none: {
      // Partitioned, never formatted: a first boot stopped between the two. Anything else on
      // the partition (a filesystem someone made) is left alone.
      auto sig = deps.host->signature(target.partition_host_path);
      if (!sig) return fail(sig.error());
      if (!sig->empty()) {
        return fail(Errc::refused,
                    "partition " + target.partition_host_path.string() + " is labelled cairn-persist but holds " + *sig +
                        ", not LUKS2: left alone",
                    "if its data is not needed: `cairn-agent volume-setup --wipe --yes-destroy-data`");
      }
      out.steps.push_back("partition " + target.partition_host_path.string() + " is blank (first boot interrupted)");
      return format_and_mount(config, deps, target, std::move(out));
    }
    case LuksHeader::State::unreadable:
      return fail(unlock_failed(config, deps, target.partition_host_path, "",
                                Error{Errc::data, "its LUKS header does not load (" + header->detail + ")", ""},
                                config.policy));
    case LuksHeader::State::luks2: break;
  }
  // The mapping may be open already: an earlier run (or boot) activated it and stopped before
  // mounting. Activating again would fail (the name is taken); the key was proved when it was
  // opened, so continue with fsck and mount, provided it is this volume behind it.
  auto mapping = deps.crypt->active_mapping(config.mapper_name);
  if (!mapping) return fail(mapping.error());
  if (*mapping) {
    const auto mapped = mapper_path(config);
    if ((*mapping)->luks_uuid != header->uuid) {
      std::string other = (*mapping)->luks_uuid.empty() ? "not LUKS" : "LUKS " + (*mapping)->luks_uuid;
      if (!(*mapping)->backing_device.empty()) other += ", " + (*mapping)->backing_device;
      return fail(Errc::refused,
                  mapped.string() + " is open on another volume (" + other + "), not on " +
                      target.partition_host_path.string() + " (LUKS " + header->uuid + ")",
                  "close it (`cryptsetup close " + config.mapper_name +
                      "`) or set persist mapper_name to another name, then run `cairn-agent volume-setup` again");
    }
    out.steps.push_back(mapped.string() + " was already open on " + target.partition_host_path.string() +
                        " (an earlier run stopped before mounting): continuing");
    out.action = VolumeOutcome::Action::resumed;
    if (auto ok = deps.host->check_filesystem(mapped); !ok) return fail(ok.error());
    out.steps.push_back("checked the filesystem on " + mapped.string());
    if (auto ok = deps.host->mount(mapped, config.mount_point); !ok) return fail(ok.error());
    out.steps.push_back("mounted at " + config.mount_point.string());
    return out;
  }
  bool unlock_failure = false;
  PcrPolicy policy;
  auto opening = opening_key(config, deps, *header, unlock_failure, policy);
  if (!opening) {
    if (!unlock_failure) return fail(opening.error());
    return fail(unlock_failed(config, deps, target.partition_host_path, header->uuid, opening.error(), policy));
  }
  // Check the key against the keyslots first (no device-mapper needed), so a wrong key is an
  // unlock failure even where activation is not possible.
  auto slot = deps.crypt->check_passphrase(device, opening->passphrase);
  if (!slot) {
    if (slot.error().code != Errc::refused) return fail(slot.error());
    return fail(unlock_failed(config, deps, target.partition_host_path, header->uuid, slot.error(), policy));
  }
  out.keyslot = *slot;
  out.steps.push_back("unlocked keyslot " + std::to_string(*slot) + " with the " +
                      std::string(key_source_name(config.key_source)) + " key");
  out.key_binding = key_binding(config.key_source, policy);
  out.action = VolumeOutcome::Action::opened;
  if (auto ok = activate_and_mount(config, deps, device, opening->passphrase, false, out); !ok) return fail(ok.error());
  return out;
}

Result<std::filesystem::path> existing_luks(const VolumeConfig& config, VolumeDeps& deps, LuksHeader& header) {
  auto target = deps.host->locate(config.disk, config.min_bytes);
  if (!target) return fail(target.error());
  if (!target->exists) {
    return fail(Errc::config, "no cairn-persist partition (disk rule " + to_string(config.disk) + ")",
                "run `cairn-agent volume-setup` first");
  }
  const auto device = deps.host->resolve(target->partition_host_path);
  auto h = deps.crypt->inspect(device);
  if (!h) return fail(h.error());
  if (h->state != LuksHeader::State::luks2) {
    return fail(Errc::data, "partition " + target->partition_host_path.string() + " holds no loadable LUKS2 header",
                "`cairn-agent persist status` shows what is there");
  }
  header = std::move(*h);
  return device;
}

}  // namespace

std::string_view key_source_name(KeySource source) { return source == KeySource::tpm ? "tpm" : "escrow"; }

std::string key_binding(KeySource source, const PcrPolicy& policy) {
  if (source != KeySource::tpm) return "escrow key";
  return "TPM PCR " + pcr_list(policy.pcrs) + " " + policy.bank;
}

std::string_view action_name(VolumeOutcome::Action action) {
  switch (action) {
    case VolumeOutcome::Action::formatted: return "formatted";
    case VolumeOutcome::Action::opened: return "opened";
    case VolumeOutcome::Action::already_mounted: return "already_mounted";
    case VolumeOutcome::Action::resumed: return "resumed";
  }
  return "opened";
}

Result<VolumeOutcome> open_volume(const VolumeConfig& config, VolumeDeps& deps) {
  if (auto ok = check_deps(config, deps); !ok) return fail(ok.error());
  VolumeOutcome out;
  auto mounted = deps.host->is_mounted(config.mount_point);
  if (!mounted) return fail(mounted.error());
  if (*mounted) {
    out.action = VolumeOutcome::Action::already_mounted;
    out.steps.push_back(config.mount_point.string() + " is already mounted");
    return out;
  }
  auto target = deps.host->locate(config.disk, config.min_bytes);
  if (!target) return fail(target.error());
  out.target = *target;
  if (target->exists) return open_existing(config, deps, *target, std::move(out));

  // First boot: nothing is written to a disk that could not be opened afterwards.
  if (!deps.host->device_mapper_available()) {
    return fail(Errc::unavailable,
                "device-mapper is not available in this kernel (no /dev/mapper/control): the first boot would leave "
                "an encrypted volume it cannot open; " + target->disk.host_path.string() + " left untouched",
                "boot a kernel with dm-crypt (CONFIG_DM_CRYPT), or load it: modprobe dm_crypt");
  }
  if (auto ok = deps.host->partition(*target); !ok) return fail(ok.error());
  out.steps.push_back("created GPT partition " + target->partition_host_path.string() + " (cairn-persist) on " +
                      target->disk.host_path.string());
  if (auto ok = deps.host->wait_for_device(target->partition_host_path); !ok) return fail(ok.error());
  PersistTarget created = *target;
  created.exists = true;
  out.target = created;
  return format_and_mount(config, deps, created, std::move(out));
}

Result<VolumeOutcome> wipe_and_create(const VolumeConfig& config, VolumeDeps& deps) {
  if (auto ok = check_deps(config, deps); !ok) return fail(ok.error());
  auto mounted = deps.host->is_mounted(config.mount_point);
  if (!mounted) return fail(mounted.error());
  if (*mounted) {
    return fail(Errc::refused, config.mount_point.string() + " is mounted: the volume is in use",
                "stop the agent's service and unmount it before wiping");
  }
  auto target = deps.host->locate(config.disk, config.min_bytes);
  if (!target) return fail(target.error());
  if (!target->exists) return open_volume(config, deps);
  VolumeOutcome out;
  out.target = *target;
  // A mapping left open by an earlier run (not mounted: checked above) holds the device busy.
  auto mapping = deps.crypt->active_mapping(config.mapper_name);
  if (!mapping) return fail(mapping.error());
  if (*mapping) {
    auto header = deps.crypt->inspect(deps.host->resolve(target->partition_host_path));
    if (!header) return fail(header.error());
    if (header->state != LuksHeader::State::luks2 || (*mapping)->luks_uuid != header->uuid) {
      return fail(Errc::refused,
                  mapper_path(config).string() + " is open on another volume, not on " +
                      target->partition_host_path.string(),
                  "close it (`cryptsetup close " + config.mapper_name + "`), then run the wipe again");
    }
    if (auto ok = deps.crypt->deactivate(config.mapper_name); !ok) return fail(ok.error());
    out.steps.push_back("closed " + mapper_path(config).string() + " (left open by an earlier run)");
  }
  out.steps.push_back("wiping " + target->partition_host_path.string() + " (operator confirmed)");
  return format_and_mount(config, deps, *target, std::move(out));
}

Result<RecoveryKey> make_recovery_key() {
  auto bytes = random_secret(32);
  if (!bytes) return fail(bytes.error());
  const std::string hex = hex_encode(reinterpret_cast<const unsigned char*>(bytes->view().data()), bytes->size());
  RecoveryKey key;
  for (std::size_t i = 0; i < hex.size(); i += 8) key.display += (i == 0 ? "" : "-") + hex.substr(i, 8);
  return key;
}

Secret recovery_passphrase(std::string_view typed) {
  std::string out;
  for (char c : typed) {
    if (c == '-' || std::isspace(static_cast<unsigned char>(c))) continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return Secret(std::move(out));
}

Result<RecoveryKey> add_recovery(const VolumeConfig& config, VolumeDeps& deps) {
  if (auto ok = check_deps(config, deps); !ok) return fail(ok.error());
  LuksHeader header;
  auto device = existing_luks(config, deps, header);
  if (!device) return fail(device.error());
  if (auto existing = find_token(header, kRecoveryTokenType)) {
    auto slot = decode_recovery_token(*existing);
    return fail(Errc::refused,
                "the volume has a recovery key already" + (slot ? " (keyslot " + std::to_string(*slot) + ")" : std::string{}),
                "one recovery key per volume; keep the one you have");
  }
  bool unlock_failure = false;
  PcrPolicy policy;
  auto opening = opening_key(config, deps, header, unlock_failure, policy);
  if (!opening) return fail(opening.error().with_context("opening the volume to add a recovery key"));
  auto key = make_recovery_key();
  if (!key) return fail(key.error());
  auto slot = deps.crypt->add_keyslot(*device, opening->passphrase, recovery_passphrase(key->display));
  if (!slot) return fail(slot.error());
  if (auto id = deps.crypt->set_token(*device, encode_recovery_token(*slot), std::nullopt); !id) {
    return fail(id.error());
  }
  return key;
}

Result<int> reseal(const VolumeConfig& config, VolumeDeps& deps, const Secret& recovery) {
  if (auto ok = check_deps(config, deps); !ok) return fail(ok.error());
  if (config.key_source != KeySource::tpm) {
    return fail(Errc::config, "reseal: the key source is escrow, nothing is sealed to a TPM",
                "reseal applies to key_source tpm");
  }
  LuksHeader header;
  auto device = existing_luks(config, deps, header);
  if (!device) return fail(device.error());
  auto recovery_slot = deps.crypt->check_passphrase(*device, recovery);
  if (!recovery_slot) {
    if (recovery_slot.error().code == Errc::refused) {
      return fail(Errc::refused, "reseal: the recovery key does not open " + device->string(),
                  "type the recovery key exactly as `persist add-recovery` showed it");
    }
    return fail(recovery_slot.error());
  }
  auto old_token = find_token(header, kTpmTokenType);
  std::optional<int> old_slot;
  if (old_token) {
    if (auto decoded = decode_tpm_token(*old_token)) old_slot = decoded->keyslot;
  }
  auto secret = random_secret(32);
  if (!secret) return fail(secret.error());
  auto sealed = deps.tpm->seal(*secret, config.policy);
  if (!sealed) return fail(sealed.error().with_context("reseal"));
  // New keyslot, then the token names it (one header write), then the old slot goes: a crash
  // at any point leaves a volume that the recovery key, and the TPM at least once, open.
  auto slot = deps.crypt->add_keyslot(*device, recovery, passphrase_of(*secret));
  if (!slot) return fail(slot.error());
  auto id = deps.crypt->set_token(*device, encode_tpm_token(TpmToken{*slot, *sealed}),
                                  old_token ? std::optional<int>(old_token->id) : std::nullopt);
  if (!id) return fail(id.error());
  if (old_slot && *old_slot != *slot && *old_slot != *recovery_slot &&
      std::ranges::find(header.active_keyslots, *old_slot) != header.active_keyslots.end()) {
    if (auto ok = deps.crypt->remove_keyslot(*device, *old_slot); !ok) return fail(ok.error());
  }
  return *slot;
}

}  // namespace cairn::agent::persist
