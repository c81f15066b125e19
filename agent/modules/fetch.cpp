#include "agent/modules/fetch.hpp"

#include <sys/stat.h>

#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/oci/module_artifact.hpp"

namespace cairn::agent::modules {

Result<std::optional<RegistrySettings>> registry_settings(const AgentConfig& config) {
  if (config.module_registry.empty()) return std::optional<RegistrySettings>{};
  RegistrySettings s;
  const auto slash = config.module_registry.find('/');
  s.host = config.module_registry.substr(0, slash);
  s.prefix = slash == std::string::npos ? "" : config.module_registry.substr(slash + 1);
  while (!s.prefix.empty() && s.prefix.back() == '/') s.prefix.pop_back();
  s.options.scheme = config.module_registry_plain_http ? "http" : "https";
  if (!config.module_registry_credentials.empty()) {
    const auto& path = config.module_registry_credentials;
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      return fail(Errc::config, "registry credentials " + path.string() + " are readable by group or others",
                  "chmod 600 " + path.string());
    }
    auto text = read_file(path, 64 * 1024);
    if (!text) return fail(text.error().with_context("registry credentials"));
    auto j = parse_json(*text, path.string());
    if (!j || !j->is_object()) return fail(Errc::config, path.string() + ": not a JSON object {\"username\", \"password\"}");
    try {
      s.options.username = j->value("username", "");
      s.options.password = j->value("password", "");
    } catch (const nlohmann::json::exception&) {
      return fail(Errc::config, path.string() + ": username and password must be strings");
    }
  }
  return std::optional<RegistrySettings>(std::move(s));
}

Result<oci::Reference> module_reference(const RegistrySettings& s, const std::string& name, const std::string& version) {
  if (auto ok = module::validate_name(name, "module name"); !ok) return fail(Error{Errc::usage, ok.error().message, ok.error().hint});
  if (auto ok = module::validate_version(version); !ok) return fail(Error{Errc::usage, ok.error().message, ok.error().hint});
  return oci::parse_reference(s.host + "/" + (s.prefix.empty() ? "" : s.prefix + "/") + name + ":" + version);
}

Result<FetchedModule> fetch_module(oci::Registry& registry, const oci::Reference& ref, ModuleStore& store) {
  auto resolved = oci::resolve_module(registry, ref);
  if (!resolved) return fail(resolved.error().with_context("fetch " + ref.str()));
  if (resolved->image.size > module::kMaxImageBytes) {
    return fail(Errc::data, "fetch " + ref.str() + ": the image claims " + std::to_string(resolved->image.size) + " bytes",
                "a module image is at most 16 GiB; the registry entry is not a sane module");
  }
  FetchedModule out;
  auto digest_ref = ref;
  digest_ref.tag.clear();
  digest_ref.digest = resolved->manifest_digest;
  out.reference = digest_ref.str();
  out.manifest_text = std::move(resolved->module_manifest);
  out.signatures = std::move(resolved->signatures);
  out.image_digest = resolved->image.digest;
  auto dest = store.blob_path(out.image_digest);
  if (!dest) return fail(dest.error());
  out.image = *dest;
  if (!store.has_blob(out.image_digest)) {
    if (auto ok = make_dirs(dest->parent_path()); !ok) return fail(ok.error());
    if (auto ok = oci::fetch_image(registry, ref, *resolved, *dest); !ok) return fail(ok.error().with_context("fetch " + ref.str() + " image"));
    out.downloaded = true;
  }
  return out;
}

}  // namespace cairn::agent::modules
