// The real parts of the /persist flows, put together from the agent's configuration: the TPM
// (or the escrow client), libcryptsetup, the host. Used by `volume-setup` and `persist ...`.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "agent/config.hpp"
#include "agent/persist/volume.hpp"

namespace cairn::agent::persist {

Result<VolumeConfig> volume_config(const AgentConfig& config);

struct PersistRuntime {
  VolumeConfig config;
  std::unique_ptr<Tpm> tpm;
  std::unique_ptr<EscrowSource> escrow;
  std::unique_ptr<BlockCrypt> crypt;
  std::unique_ptr<VolumeHost> host;
  VolumeDeps deps;
};

// with_key_source: also open the configured key source (the TPM through its TCTI, or the
// escrow client with the node's credentials from credentials_dir, default the agent's state
// dir). A missing TPM with key_source tpm is an error: escrow is never tried in its place.
Result<std::unique_ptr<PersistRuntime>> open_runtime(const AgentConfig& config, bool with_key_source,
                                                     const std::filesystem::path& credentials_dir = {});

// The critical event of the last unlock failure, kept on tmpfs (/run, /persist is not open) for
// the service to send once it runs: <root>/run/cairn/persist-event.json (protocol::Event JSON).
std::filesystem::path pending_event_path(const Root& root);
Status keep_pending_event(const Root& root, const protocol::Event& event);
Status clear_pending_event(const Root& root);
Result<std::optional<Json>> read_pending_event(const Root& root);

}  // namespace cairn::agent::persist
