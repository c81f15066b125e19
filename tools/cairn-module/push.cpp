// `cairn-module push REGISTRY/REPO:TAG --image I --manifest M [--signature S]` and
// `cairn-module pull REGISTRY/REPO:TAG --out OUT`: the module as an OCI artifact
// (common/oci/module_artifact.hpp). Credentials: --username and CAIRN_REGISTRY_PASSWORD.
#include <cstdlib>
#include <filesystem>

#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "common/oci/module_artifact.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {
namespace {

struct RegistryFlags {
  bool plain_http = false;
  std::string username;
  std::string ca_file;
  void add(CLI::App* cmd) {
    cmd->add_flag("--plain-http", plain_http, "talk http, not https (a registry on loopback)");
    cmd->add_option("--username", username, "registry user (password in CAIRN_REGISTRY_PASSWORD)");
    cmd->add_option("--ca-file", ca_file, "PEM bundle the registry's certificate must chain to");
  }
  oci::RegistryOptions options() const {
    oci::RegistryOptions r;
    r.scheme = plain_http ? "http" : "https";
    r.username = username;
    if (const char* p = std::getenv("CAIRN_REGISTRY_PASSWORD")) r.password = p;
    r.tls.ca_file = ca_file;
    return r;
  }
};

}  // namespace

void add_push(CLI::App& app, int& exit_code) {
  {
    auto* cmd = app.add_subcommand("push", "publish a module (image, manifest, signature) to an OCI registry");
    struct Options {
      std::string ref, image, manifest, signature;
      RegistryFlags registry;
      bool json = false;
    };
    auto o = std::make_shared<Options>();
    cmd->add_option("REF", o->ref, "REGISTRY/REPOSITORY:TAG")->required();
    cmd->add_option("--image", o->image, "the .erofs image")->required();
    cmd->add_option("--manifest", o->manifest, "its .manifest.json")->required();
    cmd->add_option("--signature", o->signature, "its .sig (an unsigned module is refused by agents)");
    o->registry.add(cmd);
    cmd->add_flag("--json", o->json, "one JSON object");
    cmd->callback([o, &exit_code] {
      run("push", o->json, exit_code, [&]() -> Result<Outcome> {
        auto ref = oci::parse_reference(o->ref);
        if (!ref) return fail(ref.error());
        auto manifest = read_file(o->manifest, module::kMaxManifestBytes);
        if (!manifest) return fail(manifest.error());
        std::string signature;
        if (!o->signature.empty()) {
          auto s = read_file(o->signature, module::kMaxSignatureBytes);
          if (!s) return fail(s.error());
          signature = std::move(*s);
        }
        const auto options = o->registry.options();
        auto http = oci::make_registry_http(options);
        oci::Registry registry(*http, ref->registry, options);
        auto pushed = oci::push_module(registry, *ref, o->image, *manifest, signature);
        if (!pushed) return fail(pushed.error().with_context("push " + ref->str()));
        Outcome out;
        out.details = {{"reference", ref->str()}, {"manifest_digest", pushed->manifest.digest}, {"signature_digest", nullptr},
                       {"referrers_tag", pushed->referrers_tag ? oci::referrers_tag(pushed->manifest.digest) : ""}};
        out.human = "pushed " + ref->str() + "@" + pushed->manifest.digest + "\n";
        if (pushed->signature) {
          out.details["signature_digest"] = pushed->signature->digest;
          out.human += "signature " + pushed->signature->digest +
                       (pushed->referrers_tag ? " (listed in tag " + oci::referrers_tag(pushed->manifest.digest) + ")" : "") + "\n";
        } else {
          out.human += "warning: no signature attached; agents refuse unsigned modules\n";
        }
        return out;
      });
    });
  }
  {
    auto* cmd = app.add_subcommand("pull", "fetch a module from an OCI registry (OUT.erofs, OUT.manifest.json, OUT.sig)");
    struct Options {
      std::string ref, out;
      RegistryFlags registry;
      bool json = false;
    };
    auto o = std::make_shared<Options>();
    cmd->add_option("REF", o->ref, "REGISTRY/REPOSITORY:TAG or @sha256:...")->required();
    cmd->add_option("--out", o->out, "output prefix")->required();
    o->registry.add(cmd);
    cmd->add_flag("--json", o->json, "one JSON object");
    cmd->callback([o, &exit_code] {
      run("pull", o->json, exit_code, [&]() -> Result<Outcome> {
        auto ref = oci::parse_reference(o->ref);
        if (!ref) return fail(ref.error());
        const auto options = o->registry.options();
        auto http = oci::make_registry_http(options);
        oci::Registry registry(*http, ref->registry, options);
        auto resolved = oci::resolve_module(registry, *ref);
        if (!resolved) return fail(resolved.error());
        const auto parent = std::filesystem::absolute(o->out + ".erofs").parent_path();
        if (auto s = make_dirs(parent); !s) return fail(s.error());
        if (auto s = oci::fetch_image(registry, *ref, *resolved, o->out + ".erofs"); !s) return fail(s.error());
        if (auto s = write_file_atomic(o->out + ".manifest.json", resolved->module_manifest, 0644); !s) return fail(s.error());
        Outcome out;
        out.details = {{"reference", ref->str()}, {"manifest_digest", resolved->manifest_digest},
                       {"image", o->out + ".erofs"}, {"signatures", resolved->signatures.size()}};
        for (std::size_t i = 0; i < resolved->signatures.size(); ++i) {
          const std::string path = o->out + (i == 0 ? std::string(".sig") : "." + std::to_string(i) + ".sig");
          if (auto s = write_file_atomic(path, resolved->signatures[i], 0644); !s) return fail(s.error());
        }
        out.human = "pulled " + ref->str() + "@" + resolved->manifest_digest + " -> " + o->out + ".erofs (" +
                    std::to_string(resolved->signatures.size()) + " signature(s); not verified: run cairn-module verify)\n";
        return out;
      });
    });
  }
}

}  // namespace cairn::module_tool
