// `cairn-module digest FILE...`: the fs-verity digest, printed as `fsverity digest` does.
#include "common/module/fsverity.hpp"
#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void add_digest(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("digest", "print the fs-verity digest of files (as `fsverity digest`)");
  struct Options {
    std::vector<std::string> files;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("FILE", o->files, "files to measure")->required();
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("digest", o->json, exit_code, [&]() -> Result<Outcome> {
      Outcome out;
      out.details["files"] = Json::array();
      for (const auto& f : o->files) {
        auto d = module::digest_file(f);
        if (!d) return fail(d.error());
        out.human += module::fsverity_display(d->fsverity) + " " + f + "\n";
        out.details["files"].push_back(
            {{"path", f}, {"fsverity", module::fsverity_display(d->fsverity)}, {"sha256", d->sha256}, {"size", d->size}});
      }
      return out;
    });
  });
}

}  // namespace cairn::module_tool
