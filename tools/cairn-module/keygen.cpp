// `cairn-module keygen OUT [--algorithm ed25519|ecdsa-p256]`: OUT.key (PKCS#8 PEM, 0600) and
// OUT.pub (SubjectPublicKeyInfo PEM); prints the key id a trust policy lists.
#include <filesystem>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/signature.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void add_keygen(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("keygen", "create a module signing key pair (OUT.key, OUT.pub)");
  struct Options {
    std::string out;
    std::string algorithm = "ed25519";
    bool force = false;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("OUT", o->out, "path prefix of the key files")->required();
  cmd->add_option("--algorithm", o->algorithm, "ed25519 (default) or ecdsa-p256")
      ->check(CLI::IsMember({"ed25519", "ecdsa-p256"}));
  cmd->add_flag("--force", o->force, "overwrite an existing key");
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("keygen", o->json, exit_code, [&]() -> Result<Outcome> {
      const std::filesystem::path priv = o->out + ".key";
      const std::filesystem::path pub = o->out + ".pub";
      if (!o->force && std::filesystem::exists(priv)) {
        return fail(Errc::usage, priv.string() + " exists; refusing to overwrite a signing key",
                    "pick another OUT, or pass --force if you mean to replace it");
      }
      auto key = generate_key(o->algorithm == "ed25519" ? KeyType::ed25519 : KeyType::p256);
      if (!key) return fail(key.error());
      auto priv_pem = private_key_pem(key->get());
      auto pub_pem = public_key_pem(key->get());
      auto id = module::key_id(key->get());
      if (!priv_pem || !pub_pem || !id) return fail(Errc::internal, "could not encode the new key");
      if (auto s = write_file_atomic(priv, *priv_pem, 0600); !s) return fail(s.error());
      if (auto s = write_file_atomic(pub, *pub_pem, 0644); !s) return fail(s.error());
      Outcome out;
      out.details = {{"private_key", priv.string()}, {"public_key", pub.string()}, {"key_id", *id},
                     {"algorithm", o->algorithm}};
      out.human = "private key " + priv.string() + " (mode 0600, keep it secret)\npublic key  " + pub.string() +
                  "\nkey id      " + *id + "\n";
      return out;
    });
  });
}

}  // namespace cairn::module_tool
