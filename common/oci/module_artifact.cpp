// Cairn modules as OCI artifacts (image-spec 1.1 "artifactType", "subject"; distribution-spec
// 1.1 "Pushing Manifests with Subject" and the referrers tag schema).
#include "common/oci/module_artifact.hpp"

#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"

namespace cairn::oci {
namespace {

// The empty config of image-spec 1.1 ("{}", guidance for artifacts).
constexpr std::string_view kEmptyType = "application/vnd.oci.empty.v1+json";
constexpr std::string_view kEmptyJson = "{}";

Json oci_manifest(std::string_view artifact_type, const Descriptor& config, const std::vector<Descriptor>& layers,
                  const std::optional<Descriptor>& subject, const std::map<std::string, std::string>& annotations) {
  Json j = {{"schemaVersion", 2}, {"mediaType", kOciManifest}, {"artifactType", artifact_type},
            {"config", descriptor_json(config)}};
  j["layers"] = Json::array();
  for (const auto& l : layers) j["layers"].push_back(descriptor_json(l));
  if (subject) j["subject"] = descriptor_json(*subject);
  if (!annotations.empty()) j["annotations"] = annotations;
  return j;
}

Result<Json> parse_object(std::string_view bytes, const std::string& what) {
  auto j = parse_json(bytes, what);
  if (!j) return fail(j.error());
  if (!j->is_object()) return fail(Errc::data, what + ": not a JSON object");
  return j;
}

}  // namespace

std::string referrers_tag(std::string_view digest) {
  std::string tag(digest);
  const auto colon = tag.find(':');
  if (colon != std::string::npos) tag[colon] = '-';
  return tag.substr(0, 128);
}

Result<Descriptor> attach_signature(Registry& registry, const std::string& repo, const Descriptor& subject,
                                    const std::string& signature_text, bool* wrote_referrers_tag) {
  auto sig = module::parse_signature(signature_text, "signature");
  if (!sig) return fail(sig.error());
  auto config = registry.push_blob_bytes(repo, kEmptyJson, std::string(kEmptyType));
  if (!config) return fail(config.error());
  auto layer = registry.push_blob_bytes(repo, signature_text, std::string(kSignatureLayerType));
  if (!layer) return fail(layer.error());
  const std::map<std::string, std::string> annotations = {{"org.cairn.module.key_id", sig->key_id},
                                                          {"org.cairn.module.algorithm", sig->algorithm}};
  const std::string bytes = dump_json(oci_manifest(kSignatureArtifactType, *config, {*layer}, subject, annotations));
  module::Sha256Stream sha;
  sha.update(bytes);
  const std::string digest = "sha256:" + sha.finish_hex();
  auto put = registry.put_manifest(repo, digest, bytes, std::string(kOciManifest));
  if (!put) return fail(put.error().with_context("push signature"));
  Descriptor sig_desc = put->descriptor;
  sig_desc.artifact_type = std::string(kSignatureArtifactType);
  sig_desc.annotations = annotations;
  if (wrote_referrers_tag != nullptr) *wrote_referrers_tag = false;
  if (put->subject_accepted) return sig_desc;  // the registry keeps its referrers list itself

  // Referrers tag fallback: read the index (if any), add this descriptor, put it back.
  const std::string tag = referrers_tag(subject.digest);
  auto existing = registry.get_manifest(repo, tag);
  if (!existing) return fail(existing.error().with_context("referrers tag " + tag));
  Json index = {{"schemaVersion", 2}, {"mediaType", kOciIndex}, {"manifests", Json::array()}};
  if (*existing) {
    auto parsed = parse_object((*existing)->bytes, "referrers index " + tag);
    if (!parsed) return fail(parsed.error());
    if (parsed->contains("manifests") && (*parsed)["manifests"].is_array()) index = std::move(*parsed);
  }
  bool present = false;
  for (const auto& m : index["manifests"]) {
    if (m.is_object() && m.contains("digest") && m["digest"] == sig_desc.digest) present = true;
  }
  if (!present) index["manifests"].push_back(descriptor_json(sig_desc));
  auto put_index = registry.put_manifest(repo, tag, dump_json(index), std::string(kOciIndex));
  if (!put_index) return fail(put_index.error().with_context("referrers tag " + tag));
  if (wrote_referrers_tag != nullptr) *wrote_referrers_tag = true;
  return sig_desc;
}

Result<PushedModule> push_module(Registry& registry, const Reference& ref, const std::filesystem::path& image,
                                 const std::string& manifest_text, const std::string& signature_text) {
  auto m = module::parse_manifest(manifest_text, "module manifest");
  if (!m) return fail(m.error());
  if (ref.tag.empty()) return fail(Errc::usage, ref.str() + ": push needs a :TAG");
  auto image_desc = registry.push_blob_file(ref.repository, image, std::string(kModuleImageType));
  if (!image_desc) return fail(image_desc.error().with_context("push image"));
  if (image_desc->size != m->size) {
    return fail(Errc::data, image.string() + ": " + std::to_string(image_desc->size) + " bytes, the manifest says " +
                                std::to_string(m->size),
                "pack the image and its manifest together (cairn-module pack)");
  }
  if (image_desc->digest != "sha256:" + m->sha256) {
    return fail(Errc::data, image.string() + ": sha256 differs from the manifest's",
                "pack the image and its manifest together (cairn-module pack)");
  }
  image_desc->annotations = {{"org.opencontainers.image.title", m->name + ".erofs"}};
  auto config = registry.push_blob_bytes(ref.repository, manifest_text, std::string(kModuleConfigType));
  if (!config) return fail(config.error().with_context("push module manifest"));
  Descriptor manifest_layer = *config;
  manifest_layer.media_type = std::string(kModuleManifestType);
  manifest_layer.annotations = {{"org.opencontainers.image.title", m->name + ".manifest.json"}};
  const std::map<std::string, std::string> annotations = {
      {"org.opencontainers.image.title", m->name}, {"org.opencontainers.image.version", m->version}};
  const std::string bytes =
      dump_json(oci_manifest(kModuleArtifactType, *config, {*image_desc, manifest_layer}, std::nullopt, annotations));
  auto put = registry.put_manifest(ref.repository, ref.tag, bytes, std::string(kOciManifest));
  if (!put) return fail(put.error().with_context("push manifest"));
  PushedModule out;
  out.manifest = put->descriptor;
  if (!signature_text.empty()) {
    bool tag_written = false;
    auto sig = attach_signature(registry, ref.repository, out.manifest, signature_text, &tag_written);
    if (!sig) return fail(sig.error());
    out.signature = *sig;
    out.referrers_tag = tag_written;
  }
  return out;
}

Result<std::vector<std::string>> find_signatures(Registry& registry, const std::string& repo,
                                                 const std::string& manifest_digest) {
  auto listed = registry.get_referrers(repo, manifest_digest);
  if (!listed) return fail(listed.error());
  if (!*listed) {
    listed = registry.get_manifest(repo, referrers_tag(manifest_digest));
    if (!listed) return fail(listed.error());
  }
  std::vector<std::string> out;
  if (!*listed) return out;  // no referrers at all: unsigned
  auto index = parse_object((*listed)->bytes, "referrers of " + manifest_digest);
  if (!index) return fail(index.error());
  if (!index->contains("manifests") || !(*index)["manifests"].is_array()) {
    return fail(Errc::data, "referrers of " + manifest_digest + ": no manifests list");
  }
  for (const auto& entry : (*index)["manifests"]) {
    if (out.size() >= kMaxSignatures) break;
    auto d = parse_descriptor(entry, kMaxManifestBytes, "referrer");
    if (!d || d->artifact_type != kSignatureArtifactType) continue;  // other tools' referrers
    auto sig_manifest = registry.get_manifest(repo, d->digest);
    if (!sig_manifest) return fail(sig_manifest.error());
    if (!*sig_manifest) continue;  // listed but deleted
    auto j = parse_object((*sig_manifest)->bytes, "signature manifest " + d->digest);
    if (!j) return fail(j.error());
    // It must name this manifest as its subject: an index entry alone proves nothing.
    if (!j->contains("subject") || !(*j)["subject"].is_object() || (*j)["subject"].value("digest", "") != manifest_digest) {
      continue;
    }
    if (!j->contains("layers") || !(*j)["layers"].is_array() || (*j)["layers"].empty()) continue;
    auto layer = parse_descriptor((*j)["layers"][0], module::kMaxSignatureBytes, "signature layer");
    if (!layer) return fail(layer.error());
    auto text = registry.get_blob_bytes(repo, *layer, module::kMaxSignatureBytes);
    if (!text) return fail(text.error());
    out.push_back(std::move(*text));
  }
  return out;
}

Result<ResolvedModule> resolve_module(Registry& registry, const Reference& ref) {
  const std::string what = registry.host() + "/" + ref.repository + ":" + ref.reference();
  auto fetched = registry.get_manifest(ref.repository, ref.reference());
  if (!fetched) return fail(fetched.error());
  if (!*fetched) return fail(Errc::unavailable, what + ": no such module in the registry (404)", "check the name and tag, or push it");
  auto j = parse_object((*fetched)->bytes, what);
  if (!j) return fail(j.error());
  if (j->value("artifactType", "") != kModuleArtifactType) {
    return fail(Errc::data, what + ": not a Cairn module (artifactType '" + j->value("artifactType", "").substr(0, 80) + "')",
                "push it with cairn-module push");
  }
  if (!j->contains("layers") || !(*j)["layers"].is_array() || (*j)["layers"].size() > 16) {
    return fail(Errc::data, what + ": no layers list");
  }
  ResolvedModule out;
  out.manifest_digest = (*fetched)->digest;
  std::optional<Descriptor> manifest_desc;
  bool have_image = false;
  for (const auto& l : (*j)["layers"]) {
    auto d = parse_descriptor(l, module::kMaxImageBytes, what + " layer");
    if (!d) return fail(d.error());
    if (d->media_type == kModuleImageType && !have_image) {
      out.image = *d;
      have_image = true;
    } else if (d->media_type == kModuleManifestType && !manifest_desc) {
      manifest_desc = *d;
    }
  }
  if (!have_image || !manifest_desc) return fail(Errc::data, what + ": the image or module manifest layer is missing");
  auto text = registry.get_blob_bytes(ref.repository, *manifest_desc, module::kMaxManifestBytes);
  if (!text) return fail(text.error());
  auto m = module::parse_manifest(*text, what + " module manifest");
  if (!m) return fail(m.error());
  if (out.image.size != m->size || out.image.digest != "sha256:" + m->sha256) {
    return fail(Errc::data, what + ": the image layer (" + out.image.digest + ", " + std::to_string(out.image.size) +
                                " bytes) is not the image the module manifest describes");
  }
  out.module_manifest = std::move(*text);
  auto sigs = find_signatures(registry, ref.repository, out.manifest_digest);
  if (!sigs) return fail(sigs.error());
  out.signatures = std::move(*sigs);
  return out;
}

Status fetch_image(Registry& registry, const Reference& ref, const ResolvedModule& module,
                   const std::filesystem::path& dest) {
  return registry.fetch_blob(ref.repository, module.image, dest);
}

}  // namespace cairn::oci
