// `cairn-agent verify PATH`: checks a module file set (PATH = X.erofs, with X.manifest.json
// and X.sig beside it, as cairn-module pack and sign write them) against the agent's trust
// policy. Read-only: it enables nothing, stores nothing, mounts nothing.
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/modules/verify.hpp"
#include "common/fs.hpp"

namespace cairn::agent::cli {
namespace {

struct VerifyOptions {
  std::string path;
  std::string manifest;
  std::string signature;
  std::string name;
  std::string version;
};

std::string sibling(const std::string& image, const std::string& suffix) {
  constexpr std::string_view kImageSuffix = ".erofs";
  const auto base = image.ends_with(kImageSuffix) ? image.substr(0, image.size() - kImageSuffix.size()) : image;
  return base + suffix;
}

}  // namespace

void add_verify(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("verify", "check a module image, manifest and signature against the trust policy");
  auto o = std::make_shared<VerifyOptions>();
  cmd->add_option("PATH", o->path, "the module image (X.erofs; X.manifest.json and X.sig beside it)")->required();
  cmd->add_option("--manifest", o->manifest, "the manifest (default X.manifest.json)");
  cmd->add_option("--signature", o->signature, "the signature (default X.sig)");
  cmd->add_option("--name", o->name, "refuse unless the manifest names this module");
  cmd->add_option("--version", o->version, "refuse unless the manifest has this version");
  cmd->callback([&global, &exit_code, o] {
    exit_code = run_command("verify", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      auto policy = modules::trust_policy_from_json(config->module_trust, [&](const std::string& v) {
        return config_file_path(config->root, config->module_config_file, v);
      });
      if (!policy) return out.error = policy.error(), out;
      out.stage = "verify.read";
      const auto manifest_path = o->manifest.empty() ? sibling(o->path, ".manifest.json") : o->manifest;
      const auto signature_path = o->signature.empty() ? sibling(o->path, ".sig") : o->signature;
      auto manifest = read_file(manifest_path, module::kMaxManifestBytes);
      if (!manifest) return out.error = manifest.error(), out;
      auto signature = read_file_if_exists(signature_path, module::kMaxSignatureBytes);
      if (!signature) return out.error = signature.error(), out;
      modules::VerifyRequest request{.manifest_text = *manifest, .signatures = {}, .image = o->path,
                                     .expect_name = o->name.empty() ? std::nullopt : std::optional(o->name),
                                     .expect_version = o->version.empty() ? std::nullopt : std::optional(o->version),
                                     .enable_verity = false};
      if (*signature) request.signatures.push_back(**signature);
      out.stage = "verify";
      auto verified = modules::verify_module(request, *policy);
      if (!verified) return out.error = verified.error(), out;
      const auto& m = verified->manifest;
      out.details = {{"name", m.name}, {"version", m.version}, {"priority", m.priority}, {"size", m.size},
                     {"sha256", "sha256:" + m.sha256}, {"fsverity", module::fsverity_display(m.fsverity)},
                     {"dependencies", m.dependencies}, {"key_id", verified->key_id}, {"verity", verified->verity}};
      out.human = "module " + m.name + " " + m.version + ": OK\n  signed by " + verified->key_id + "\n  sha256:" + m.sha256 +
                  "\n  fs-verity " + module::fsverity_display(m.fsverity) + "\n  kernel fs-verity: " + verified->verity + "\n";
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
