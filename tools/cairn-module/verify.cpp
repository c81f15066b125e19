// `cairn-module verify --key PUB IMAGE MANIFEST SIG`: signature, then size + sha256 +
// fs-verity digest of the image; the error names the check that failed.
#include "common/fs.hpp"
#include "common/module/signature.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void add_verify(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("verify", "check a module's signature, sha256 and fs-verity digest");
  struct Options {
    std::string key;
    std::string image;
    std::string manifest;
    std::string signature;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("--key", o->key, "public key the signature must be made with")->required();
  cmd->add_option("IMAGE", o->image, "the EROFS image")->required();
  cmd->add_option("MANIFEST", o->manifest, "its manifest")->required();
  cmd->add_option("SIG", o->signature, "its detached signature")->required();
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("verify", o->json, exit_code, [&]() -> Result<Outcome> {
      auto text = read_file(o->manifest, module::kMaxManifestBytes);
      if (!text) return fail(text.error());
      auto m = module::parse_manifest(*text, o->manifest);
      if (!m) return fail(m.error());
      auto sig_text = read_file(o->signature, module::kMaxSignatureBytes);
      if (!sig_text) return fail(sig_text.error());
      auto sig = module::parse_signature(*sig_text, o->signature);
      if (!sig) return fail(sig.error());
      auto key = module::load_public_key(o->key);
      if (!key) return fail(key.error());
      if (auto s = module::verify_manifest(*m, *sig, key->get()); !s) return fail(s.error());
      auto digests = module::digest_file(o->image, 2, module::kMaxImageBytes);
      if (!digests) return fail(digests.error());
      if (auto s = module::check_image(*m, *digests); !s) return fail(s.error().with_context(o->image));
      Outcome out;
      out.details = {{"module", m->name},
                     {"version", m->version},
                     {"key_id", sig->key_id},
                     {"sha256", digests->sha256},
                     {"fsverity", module::fsverity_display(digests->fsverity)},
                     {"checks", {"signature", "size", "sha256", "fsverity"}}};
      out.human = "verified " + m->name + "@" + m->version + ": signature by " + sig->key_id +
                  ", size, sha256 and fs-verity digest match\n";
      return out;
    });
  });
}

}  // namespace cairn::module_tool
