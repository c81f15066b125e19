// Fetching a module from its OCI registry into the store (common/oci does the protocol:
// auth, retries with backoff, streamed sha256, Range resume). The small parts (module
// manifest, signatures) are read first and capped; the image is streamed into its blob path,
// so an interrupted download resumes from <blob>.partial on the next attempt.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "agent/modules/store.hpp"
#include "common/oci/registry.hpp"
#include "common/result.hpp"

namespace cairn::agent::modules {

struct RegistrySettings {
  std::string host;    // HOST[:PORT]
  std::string prefix;  // repository prefix; a module NAME lives in PREFIX/NAME
  oci::RegistryOptions options;
};
// From the agent's "modules" configuration; the credentials file (if any) must be 0600.
// std::nullopt when no registry is configured.
Result<std::optional<RegistrySettings>> registry_settings(const AgentConfig& config);

// HOST/PREFIX/NAME:VERSION.
Result<oci::Reference> module_reference(const RegistrySettings& settings, const std::string& name, const std::string& version);

struct FetchedModule {
  std::string reference;   // what was fetched (REGISTRY/REPO@sha256:... of its OCI manifest)
  std::string manifest_text;
  std::vector<std::string> signatures;
  std::string image_digest;  // sha256:<hex>, a blob of the store now
  std::filesystem::path image;
  // This fetch wrote the image; false: the store already held it (maybe for an attached
  // module), so a failed verification must not remove it.
  bool downloaded = false;
};
Result<FetchedModule> fetch_module(oci::Registry& registry, const oci::Reference& ref, ModuleStore& store);

}  // namespace cairn::agent::modules
