// `cairn-module inspect FILE...`: what a manifest, a signature or an image holds.
#include "common/fs.hpp"
#include "common/module/signature.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void add_inspect(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("inspect", "show a module manifest, signature or image");
  struct Options {
    std::vector<std::string> files;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("FILE", o->files, "manifest (.manifest.json), signature (.sig) or image")->required();
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("inspect", o->json, exit_code, [&]() -> Result<Outcome> {
      Outcome out;
      out.details["files"] = Json::array();
      for (const auto& f : o->files) {
        auto head = read_file(f, module::kMaxManifestBytes);
        const bool text = head.has_value() && !head->empty() && head->front() == '{';
        if (text && head->find("\"cairn.module.signature.v1\"") != std::string::npos) {
          auto sig = module::parse_signature(*head, f);
          if (!sig) return fail(sig.error());
          out.details["files"].push_back({{"path", f}, {"kind", "signature"}, {"algorithm", sig->algorithm},
                                          {"key_id", sig->key_id}});
          out.human += f + ": signature\n  algorithm " + sig->algorithm + "\n  key id    " + sig->key_id + "\n";
        } else if (text) {
          auto m = module::parse_manifest(*head, f);
          if (!m) return fail(m.error());
          Json j = module::manifest_to_json(*m);
          j["fsverity"] = module::fsverity_display(m->fsverity);
          out.details["files"].push_back({{"path", f}, {"kind", "manifest"}, {"manifest", j}});
          std::string deps;
          for (const auto& d : m->dependencies) deps += (deps.empty() ? "" : ", ") + d;
          out.human += f + ": manifest\n  name      " + m->name + "\n  version   " + m->version + "\n  priority  " +
                       std::to_string(m->priority) + "\n  size      " + std::to_string(m->size) + "\n  sha256    " +
                       m->sha256 + "\n  fsverity  " + module::fsverity_display(m->fsverity) + "\n  depends   " +
                       (deps.empty() ? "-" : deps) + "\n";
        } else {
          auto d = module::digest_file(f, 2, module::kMaxImageBytes);
          if (!d) return fail(d.error());
          out.details["files"].push_back({{"path", f}, {"kind", "image"}, {"size", d->size}, {"sha256", d->sha256},
                                          {"fsverity", module::fsverity_display(d->fsverity)}});
          out.human += f + ": image\n  size      " + std::to_string(d->size) + "\n  sha256    " + d->sha256 +
                       "\n  fsverity  " + module::fsverity_display(d->fsverity) + "\n";
        }
      }
      return out;
    });
  });
}

}  // namespace cairn::module_tool
