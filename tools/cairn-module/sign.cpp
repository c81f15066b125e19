// `cairn-module sign --key KEY MANIFEST [--out SIG]`: a detached signature over the
// manifest's canonical bytes. Default SIG: NAME.manifest.json -> NAME.sig, else MANIFEST.sig.
#include "common/fs.hpp"
#include "common/module/signature.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void add_sign(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("sign", "sign a module manifest (detached .sig)");
  struct Options {
    std::string key;
    std::string manifest;
    std::string out;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("--key", o->key, "private key (cairn-module keygen)")->required();
  cmd->add_option("MANIFEST", o->manifest, "the .manifest.json written by pack")->required();
  cmd->add_option("--out", o->out, "signature file to write");
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("sign", o->json, exit_code, [&]() -> Result<Outcome> {
      auto text = read_file(o->manifest, module::kMaxManifestBytes);
      if (!text) return fail(text.error());
      auto m = module::parse_manifest(*text, o->manifest);
      if (!m) return fail(m.error());
      auto key = module::load_private_key(o->key);
      if (!key) return fail(key.error());
      auto sig = module::sign_manifest(key->get(), *m);
      if (!sig) return fail(sig.error());
      std::string out_path = o->out;
      if (out_path.empty()) {
        constexpr std::string_view kSuffix = ".manifest.json";
        out_path = o->manifest.ends_with(kSuffix) ? o->manifest.substr(0, o->manifest.size() - kSuffix.size()) + ".sig"
                                                  : o->manifest + ".sig";
      }
      if (auto s = write_file_atomic(out_path, module::serialize_signature(*sig), 0644); !s) return fail(s.error());
      Outcome out;
      out.details = {{"signature", out_path}, {"key_id", sig->key_id}, {"algorithm", sig->algorithm},
                     {"module", m->name + "@" + m->version}};
      out.human = "signed " + m->name + "@" + m->version + " with " + sig->key_id + " -> " + out_path + "\n";
      return out;
    });
  });
}

}  // namespace cairn::module_tool
