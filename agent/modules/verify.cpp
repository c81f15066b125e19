#include "agent/modules/verify.hpp"

#include <fcntl.h>
#include <linux/fsverity.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/module/fsverity.hpp"

namespace cairn::agent::modules {
namespace {

std::string strip_prefix(const std::string& digest) {
  return digest.starts_with("sha256:") ? digest.substr(7) : digest;
}

// Signature check against the policy: the first signature by an allowed key that verifies.
Result<std::pair<std::size_t, std::string>> check_signatures(const module::Manifest& m,
                                                             const std::vector<std::string>& signatures,
                                                             const TrustPolicy& policy) {
  if (signatures.empty()) {
    return fail(Errc::refused, "module " + m.name + " " + m.version + " is unsigned",
                "sign it (cairn-module sign) with a key the agent's trust policy allows");
  }
  const auto allowed = allowed_keys(policy, m.name);
  if (allowed.empty()) {
    return fail(Errc::refused, "the trust policy allows no key for module " + m.name,
                "add the module's signing key under \"trust\" in the agent's modules configuration, or to the policy control distributes");
  }
  std::string reasons;
  for (std::size_t i = 0; i < signatures.size(); ++i) {
    auto sig = module::parse_signature(signatures[i], "signature " + std::to_string(i + 1));
    if (!sig) {
      reasons += (reasons.empty() ? "" : "; ") + sig.error().message;
      continue;
    }
    if (std::find(allowed.begin(), allowed.end(), sig->key_id) == allowed.end()) {
      reasons += (reasons.empty() ? "" : "; ") + std::string("signed by key ") + sig->key_id +
                 ", which the trust policy does not allow for module " + m.name;
      continue;
    }
    auto key = policy.keys.find(sig->key_id);
    if (key == policy.keys.end()) continue;  // allowed ids always have their key loaded
    if (auto ok = module::verify_manifest(m, *sig, key->second.get()); !ok) {
      reasons += (reasons.empty() ? "" : "; ") + ok.error().message;
      continue;
    }
    return std::pair{i, sig->key_id};
  }
  return fail(Errc::refused, "module " + m.name + " " + m.version + ": no trusted signature verifies (" + reasons + ")",
              "re-sign it with an allowed key, or fetch it again if it was damaged");
}

Status check_image_file(const module::Manifest& m, const std::filesystem::path& image) {
  struct stat st{};
  if (::stat(image.c_str(), &st) != 0) return fail(Errc::io, "stat " + image.string() + ": " + std::strerror(errno));
  // The size first: a truncated or padded image is refused without hashing it.
  if (static_cast<std::uint64_t>(st.st_size) != m.size) {
    return fail(Errc::data, "module " + m.name + ": image " + image.string() + " has " + std::to_string(st.st_size) +
                                " bytes, the manifest says " + std::to_string(m.size),
                "the image is truncated or is not the one the manifest describes; fetch it again");
  }
  auto digests = module::digest_file(image, 2, m.size);
  if (!digests) return fail(digests.error());
  if (auto ok = module::check_image(m, *digests); !ok) return fail(ok.error().with_context("module " + m.name + " image " + image.string()));
  return {};
}

}  // namespace

Result<TrustPolicy> trust_policy_from_json(const Json& j,
                                           const std::function<std::filesystem::path(const std::string&)>& resolve) {
  TrustPolicy policy;
  if (j.is_null()) return policy;
  if (!j.is_object()) return fail(Errc::config, "modules trust policy: not an object of NAME -> [key files]");
  for (const auto& [name, files] : j.items()) {
    if (name != "*") {
      if (auto ok = module::validate_name(name, "trust policy module name"); !ok) return fail(Errc::config, ok.error().message);
    }
    if (!files.is_array()) return fail(Errc::config, "modules trust policy \"" + name + "\": not a list of key files");
    auto& ids = policy.allowed[name];
    for (const auto& f : files) {
      if (!f.is_string()) return fail(Errc::config, "modules trust policy \"" + name + "\": a key file is not a string");
      const auto path = resolve(f.get<std::string>());
      auto key = module::load_public_key(path);
      if (!key) return fail(Error{Errc::config, "trust policy key " + path.string() + ": " + key.error().message, key.error().hint});
      auto id = module::key_id(key->get());
      if (!id) return fail(Error{Errc::config, "trust policy key " + path.string() + ": " + id.error().message, ""});
      ids.push_back(*id);
      policy.keys.emplace(*id, std::move(*key));
    }
  }
  return policy;
}

std::vector<std::string> allowed_keys(const TrustPolicy& policy, const std::string& name) {
  std::vector<std::string> out;
  for (const auto* key : {&name, static_cast<const std::string*>(nullptr)}) {
    auto it = policy.allowed.find(key ? *key : std::string("*"));
    if (it != policy.allowed.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  }
  for (const auto& rule : policy.distributed) {
    if (module::policy_pattern_matches(rule.pattern, name)) out.insert(out.end(), rule.key_ids.begin(), rule.key_ids.end());
  }
  return out;
}

Result<VerityResult> kernel_verity(const std::filesystem::path& file, bool enable) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return fail(Errc::io, "open " + file.string() + ": " + std::strerror(errno));
  const auto unavailable = [&](int err) {
    return VerityResult{.enabled = false, .measured_hex = {},
                        .unavailable = std::string("the kernel or the filesystem of ") + file.parent_path().string() +
                                       " lacks fs-verity (" + std::strerror(err) + "); the image is checked by sha256 instead"};
  };
  if (enable) {
    fsverity_enable_arg arg{};
    arg.version = 1;
    arg.hash_algorithm = FS_VERITY_HASH_ALG_SHA256;
    arg.block_size = static_cast<__u32>(module::kVerityBlockSize);
    if (::ioctl(fd.get(), FS_IOC_ENABLE_VERITY, &arg) != 0 && errno != EEXIST) {
      if (errno == ENOTTY || errno == EOPNOTSUPP || errno == EINVAL) return unavailable(errno);
      return fail(Errc::io, "FS_IOC_ENABLE_VERITY " + file.string() + ": " + std::strerror(errno));
    }
  }
  // struct fsverity_digest ends in a flexible array: room for a SHA-512 digest behind it.
  alignas(fsverity_digest) unsigned char buf[sizeof(fsverity_digest) + 64] = {};
  auto* head = reinterpret_cast<fsverity_digest*>(buf);
  head->digest_size = 64;
  if (::ioctl(fd.get(), FS_IOC_MEASURE_VERITY, buf) != 0) {
    if (errno == ENODATA) return VerityResult{.enabled = false, .measured_hex = {}, .unavailable = "fs-verity is not enabled on " + file.string()};
    if (errno == ENOTTY || errno == EOPNOTSUPP) return unavailable(errno);
    return fail(Errc::io, "FS_IOC_MEASURE_VERITY " + file.string() + ": " + std::strerror(errno));
  }
  if (head->digest_algorithm != FS_VERITY_HASH_ALG_SHA256 || head->digest_size != 32) {
    return fail(Errc::data, file.string() + ": fs-verity is enabled with another hash than SHA-256", "store the image again");
  }
  return VerityResult{.enabled = true, .measured_hex = hex_encode(buf + sizeof(fsverity_digest), 32), .unavailable = {}};
}

Result<VerifiedModule> verify_module(const VerifyRequest& r, const TrustPolicy& policy) {
  auto manifest = module::parse_manifest(r.manifest_text, "module manifest of " + r.image.string());
  if (!manifest) return fail(manifest.error());
  const auto& m = *manifest;
  if (r.expect_name && *r.expect_name != m.name) {
    return fail(Errc::refused, "module manifest names '" + m.name + "', the assignment asks for '" + *r.expect_name + "'",
                "the registry holds another module under that reference; fix the catalog entry");
  }
  if (r.expect_version && *r.expect_version != m.version) {
    return fail(Errc::refused, "module " + m.name + ": manifest says version " + m.version + ", the assignment asks for " + *r.expect_version,
                "fix the catalog entry or push the right version");
  }
  auto signer = check_signatures(m, r.signatures, policy);
  if (!signer) return fail(signer.error());
  if (auto ok = check_image_file(m, r.image); !ok) return fail(ok.error());

  VerifiedModule out{.manifest = m, .key_id = signer->second, .signature_index = signer->first, .verity = {}};
  auto verity = kernel_verity(r.image, r.enable_verity);
  if (!verity) return fail(verity.error());
  if (verity->enabled) {
    if (verity->measured_hex != m.fsverity) {
      return fail(Errc::data, "module " + m.name + ": the kernel measures sha256:" + verity->measured_hex +
                                  ", the manifest says sha256:" + m.fsverity, "fetch the module again");
    }
    out.verity = "enabled";
  } else {
    out.verity = r.enable_verity ? "unavailable: " + verity->unavailable : "not enabled (read-only check): " + verity->unavailable;
  }
  return out;
}

Status reverify_attached(const ModuleStore& store, const AttachedModule& a, const TrustPolicy& policy) {
  auto manifest_text = store.read_blob(a.manifest_digest, module::kMaxManifestBytes);
  if (!manifest_text) return fail(manifest_text.error().with_context("module " + a.name + " manifest"));
  auto signature = store.read_blob(a.signature_digest, module::kMaxSignatureBytes);
  if (!signature) return fail(signature.error().with_context("module " + a.name + " signature"));
  auto manifest = module::parse_manifest(*manifest_text, "stored manifest of " + a.name);
  if (!manifest) return fail(manifest.error());
  if (manifest->name != a.name || manifest->version != a.version) {
    return fail(Errc::data, "stored manifest of " + a.name + " names " + manifest->name + " " + manifest->version);
  }
  if (auto ok = check_signatures(*manifest, {*signature}, policy); !ok) return fail(ok.error());
  auto image = store.blob_path(a.image_digest);
  if (!image) return fail(image.error());
  if (strip_prefix(a.image_digest) != manifest->sha256) {
    return fail(Errc::data, "module " + a.name + ": stored image digest differs from its manifest");
  }
  auto verity = kernel_verity(*image, false);
  if (!verity) return fail(verity.error());
  if (verity->enabled) {
    // The kernel checks every read against this measurement from now on.
    if (verity->measured_hex != manifest->fsverity) {
      return fail(Errc::data, "module " + a.name + ": the kernel measures sha256:" + verity->measured_hex + ", the manifest says sha256:" + manifest->fsverity);
    }
    return {};
  }
  if (auto ok = check_image_file(*manifest, *image); !ok) {
    return fail(Error{ok.error().code, ok.error().message + " (the stored file changed since it was verified)", "attach the module again"});
  }
  return {};
}

}  // namespace cairn::agent::modules
