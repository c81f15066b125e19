// Escrow mode's credentials (issue 15): a node without a TPM keeps its key, certificate and
// everything else on the encrypted /persist volume, whose key the control service hands out
// only over mTLS with that node's certificate. So an escrow boot enrolls first into tmpfs
// (<root>/run/cairn/credentials, 0700; the key 0600), fetches the volume key with those
// credentials, and once the volume is open moves them into /persist/cairn and wipes the tmpfs
// copy. DESIGN.md ("Persist") says what a later boot does.
#pragma once

#include <filesystem>
#include <string>

#include "agent/config.hpp"
#include "agent/persist/volume.hpp"
#include "common/result.hpp"

namespace cairn::agent::persist {

// <root>/run/cairn/credentials: the persist dir of the staged config. Its state dir
// (<...>/cairn) is laid out as /persist/cairn is: certs/<serial>/, certs/current,
// enrollment.json.
std::filesystem::path staging_persist_dir(const Root& root);

// `config` with the staging dir as its persist dir: enroll() writes its credentials there.
AgentConfig staged_config(const AgentConfig& config);

// Makes the staging dir (0700, and its state dir 0700). /run is a tmpfs in the initramfs and
// under systemd: nothing in it survives a reboot.
Status prepare_staging(const AgentConfig& config);

struct MovedCredentials {
  bool moved = false;  // false: nothing was staged (moved already, or never enrolled here)
  std::string serial;  // the certificate now current on /persist
};

// The staged set installed into /persist/cairn as its current set (CredentialStore::install:
// written to certs/<serial>/ by temp file + fsync + rename, then the certs/current link
// swapped by rename, so a crash leaves the old set or the new one), enrollment.json copied
// the same way, then the staging dir wiped. /run (tmpfs) and /persist (ext4) are never one
// filesystem, so a plain rename(2) of the set cannot apply. A set already on /persist is kept
// in its archive (CredentialStore::kArchiveKept).
Result<MovedCredentials> move_staged_credentials(const AgentConfig& config);

// Overwrites the staged private keys with zeros (fsync'd), then removes the staging dir.
Status wipe_staging(const AgentConfig& config);

// Enrollment into tmpfs was refused (control answered 401/403/409): on a later boot of an
// escrow node this is a fleet token presenting an enrolled id (node_exists) or a used token.
// The error keeps control's message and says what the operator can do. Other errors pass.
Error escrow_enroll_error(const Error& error, std::string_view node_id);

struct EscrowOpenOutcome {
  VolumeOutcome volume;
  MovedCredentials credentials;
};

// The persist stage of an escrow boot: open_volume (deps.escrow fetches the key with the
// staged credentials), then the staged credentials moved in. A volume that does not open
// leaves them staged, for the next attempt of this boot.
Result<EscrowOpenOutcome> open_escrow_volume(const AgentConfig& config, const VolumeConfig& volume,
                                             VolumeDeps& deps);

}  // namespace cairn::agent::persist
