// A Cairn module as an OCI artifact, both directions.
// Push: the image and the module manifest are blobs of an OCI image manifest with
// artifactType application/vnd.cairn.module.v1 (config: the module manifest, media type
// application/vnd.cairn.module.config.v1+json; layers: the EROFS image, the module manifest).
// The signature is a second OCI manifest (artifactType application/vnd.cairn.module.signature.v1)
// whose `subject` is the module's OCI manifest. Registries without the referrers API
// (distribution 2.8 answers 404) get the OCI 1.1 referrers tag fallback: tag sha256-<hex>
// holding an image index that lists the signature manifests.
// Pull (the agent): resolve a tag to the manifest digest, read the module manifest and the
// signatures (small, capped) before fetching the image into a file (streamed, sha256 checked).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/oci/registry.hpp"

namespace cairn::oci {

inline constexpr std::string_view kModuleArtifactType = "application/vnd.cairn.module.v1";
inline constexpr std::string_view kModuleConfigType = "application/vnd.cairn.module.config.v1+json";
inline constexpr std::string_view kModuleImageType = "application/vnd.cairn.module.image.v1.erofs";
inline constexpr std::string_view kModuleManifestType = "application/vnd.cairn.module.manifest.v1+json";
inline constexpr std::string_view kSignatureArtifactType = "application/vnd.cairn.module.signature.v1";
inline constexpr std::string_view kSignatureLayerType = "application/vnd.cairn.module.signature.v1+json";
inline constexpr std::size_t kMaxSignatures = 16;  // read per module; more are ignored

struct PushedModule {
  Descriptor manifest;   // the module's OCI manifest (what the tag names)
  std::optional<Descriptor> signature{};  // the signature's OCI manifest
  bool referrers_tag = false;  // the sha256-<hex> fallback tag was written
};

// Pushes image + module manifest under ref's tag, then (if signature_text is not empty)
// attaches the signature. manifest_text must be a valid module manifest (checked).
Result<PushedModule> push_module(Registry& registry, const Reference& ref, const std::filesystem::path& image,
                                 const std::string& manifest_text, const std::string& signature_text);

// Attaches one more signature to an already pushed module manifest (another signer).
Result<Descriptor> attach_signature(Registry& registry, const std::string& repo, const Descriptor& subject,
                                    const std::string& signature_text, bool* wrote_referrers_tag = nullptr);

struct ResolvedModule {
  std::string manifest_digest;     // "sha256:<hex>" of the OCI manifest
  std::string module_manifest;     // the module manifest's bytes (checked against its digest)
  Descriptor image;                // the EROFS image blob
  std::vector<std::string> signatures;  // every signature file found (unverified)
};

// Resolves ref (tag or digest) and reads the small parts. Errc::data when what is there is
// not a Cairn module (other artifactType, missing layers, absurd sizes); Errc::unavailable
// when the tag does not exist. An unsigned module has an empty `signatures`.
Result<ResolvedModule> resolve_module(Registry& registry, const Reference& ref);
// The signature files attached to a manifest: referrers API first, then the fallback tag.
Result<std::vector<std::string>> find_signatures(Registry& registry, const std::string& repo,
                                                 const std::string& manifest_digest);
// Streams the image into dest (see Registry::fetch_blob).
Status fetch_image(Registry& registry, const Reference& ref, const ResolvedModule& module,
                   const std::filesystem::path& dest);

// The fallback tag for a digest: "sha256-<hex>" (distribution-spec 1.1, "Referrers Tag Schema").
std::string referrers_tag(std::string_view digest);

}  // namespace cairn::oci
