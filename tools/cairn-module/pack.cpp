// `cairn-module pack DIR --name N --version V --priority P [--depends A,B] [--compress lz4hc] --out OUT`:
// OUT.erofs (mkfs.erofs, reproducible: timestamps 0, all files root's, no xattrs, a UUID
// derived from name@version; EROFS stores directory entries sorted) and OUT.manifest.json.
// The tree is staged in a copy so the image always carries
// usr/lib/extension-release.d/extension-release.NAME, making it a valid systemd-sysext image.
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "tools/cairn-module/commands.hpp"

extern char** environ;

namespace cairn::module_tool {
namespace {

namespace fs = std::filesystem;

// A UUID (RFC 4122 layout, version 4 bits) from sha256(name "@" version): stable per module.
std::string derived_uuid(const std::string& name, const std::string& version) {
  std::string h = sha256_hex(name + "@" + version).substr(0, 32);
  h[12] = '4';
  h[16] = "89ab"[std::stoi(h.substr(16, 1), nullptr, 16) & 3];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20, 12);
}

Status run_program(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_store = extra_env;
  for (char** e = environ; *e != nullptr; ++e) env_store.emplace_back(*e);
  std::vector<char*> env;
  for (auto& e : env_store) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), env.data());
  if (rc != 0) {
    return fail(Errc::unavailable, "cannot run " + argv[0] + ": " + std::strerror(rc),
                "install erofs-utils (tools/install-deps)");
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return fail(Errc::internal, "waitpid: " + std::string(std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
      return fail(Errc::unavailable, argv[0] + " is not installed", "install erofs-utils (tools/install-deps)");
    }
    return fail(Errc::io, argv[0] + " failed (status " + std::to_string(status) + ")", "see its message above");
  }
  return {};
}

Status stage_tree(const fs::path& src, const fs::path& staging, const std::string& name, const std::string& os_id) {
  std::error_code ec;
  fs::copy(src, staging, fs::copy_options::recursive | fs::copy_options::copy_symlinks, ec);
  if (ec) return fail(Errc::io, "copy " + src.string() + " into the staging tree: " + ec.message(), "pack regular files, directories and symlinks only");
  const fs::path release = staging / "usr/lib/extension-release.d" / ("extension-release." + name);
  if (fs::exists(release)) {
    auto text = read_file(release, 64 * 1024);
    if (!text) return fail(text.error());
    if (text->find("ID=") == std::string::npos) {
      return fail(Errc::data, src.string() + ": usr/lib/extension-release.d/extension-release." + name + " has no ID= line",
                  "add ID=_any (or your os-release ID), or remove the file and let pack write it");
    }
    return {};
  }
  if (auto s = make_dirs(release.parent_path(), 0755); !s) return s;
  return write_file_atomic(release, "ID=" + os_id + "\n", 0644);
}

std::vector<std::string> split_names(const std::string& csv) {
  std::vector<std::string> out;
  std::string_view rest = csv;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    auto item = rest.substr(0, comma);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

void add_pack(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("pack", "build a reproducible EROFS module image and its manifest");
  struct Options {
    std::string dir, name, version, depends, out, os_id = "_any", compress = "none";
    int priority = 50;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("DIR", o->dir, "the tree to pack (its root is /)")->required();
  cmd->add_option("--name", o->name, "module name")->required();
  cmd->add_option("--version", o->version, "module version")->required();
  cmd->add_option("--priority", o->priority, "0-1000, higher wins in the union")->required();
  cmd->add_option("--depends", o->depends, "modules it needs, comma-separated");
  cmd->add_option("--out", o->out, "output prefix: OUT.erofs and OUT.manifest.json")->required();
  cmd->add_option("--os-id", o->os_id, "ID= of extension-release (default _any: any OS)");
  cmd->add_option("--compress", o->compress,
                  "none (default), lz4 or lz4hc: EROFS compression the kernel undoes on read; "
                  "lz4hc makes the image (what nodes download, hash and, diskless, keep in RAM) "
                  "about half the size")
      ->check(CLI::IsMember({"none", "lz4", "lz4hc"}));
  cmd->add_flag("--json", o->json, "one JSON object");
  cmd->callback([o, &exit_code] {
    run("pack", o->json, exit_code, [&]() -> Result<Outcome> {
      module::Manifest m;
      m.name = o->name;
      m.version = o->version;
      m.priority = o->priority;
      m.dependencies = split_names(o->depends);
      std::sort(m.dependencies.begin(), m.dependencies.end());
      if (auto s = module::validate_name(m.name); !s) return fail(Errc::usage, "--name: " + s.error().message, s.error().hint);
      if (auto s = module::validate_version(m.version); !s) return fail(Errc::usage, "--version: " + s.error().message, s.error().hint);
      if (o->os_id.empty() || o->os_id.find_first_of("\n=") != std::string::npos) return fail(Errc::usage, "--os-id: not an os-release ID");
      if (!fs::is_directory(o->dir)) return fail(Errc::usage, o->dir + " is not a directory");

      const fs::path image = o->out + ".erofs";
      const fs::path manifest_path = o->out + ".manifest.json";
      const fs::path parent = fs::absolute(image).parent_path();
      if (auto s = make_dirs(parent); !s) return fail(s.error());
      std::string tmpl = (parent / ".cairn-pack-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) return fail(Errc::io, "mkdtemp in " + parent.string() + ": " + std::strerror(errno));
      const fs::path work = tmpl;
      struct Cleanup {
        fs::path p;
        ~Cleanup() {
          std::error_code ec;
          fs::remove_all(p, ec);
        }
      } cleanup{work};
      const fs::path staging = work / "root";
      if (auto s = stage_tree(o->dir, staging, m.name, o->os_id); !s) return fail(s.error());
      ::chmod(staging.c_str(), 0755);
      const fs::path tmp_image = work / "image.erofs";
      std::vector<std::string> mkfs = {"mkfs.erofs", "--quiet", "-x-1", "-T0", "--all-root",
                                        "-U" + derived_uuid(m.name, m.version)};
      // lz4hc at level 12 (its highest): packing is slower, reading is as fast as lz4. Both are
      // deterministic, so the image stays reproducible.
      if (o->compress == "lz4") mkfs.push_back("-zlz4");
      if (o->compress == "lz4hc") mkfs.push_back("-zlz4hc,12");
      mkfs.push_back(tmp_image.string());
      mkfs.push_back(staging.string());
      if (auto s = run_program(mkfs, {"SOURCE_DATE_EPOCH=0"}); !s) {
        return fail(s.error());
      }
      auto digests = module::digest_file(tmp_image);
      if (!digests) return fail(digests.error());
      m.size = digests->size;
      m.sha256 = digests->sha256;
      m.fsverity = digests->fsverity;
      if (auto s = module::validate(m); !s) return fail(s.error());
      std::error_code ec;
      fs::rename(tmp_image, image, ec);
      if (ec) return fail(Errc::io, "rename to " + image.string() + ": " + ec.message());
      if (auto s = write_file_atomic(manifest_path, module::canonical_bytes(m) + "\n", 0644); !s) return fail(s.error());
      Outcome out;
      out.details = {{"image", image.string()}, {"manifest", manifest_path.string()},
                     {"module", module::manifest_to_json(m)}};
      out.human = "packed " + m.name + "@" + m.version + ": " + image.string() + " (" + std::to_string(m.size) +
                  " bytes, fs-verity " + module::fsverity_display(m.fsverity) + ")\nmanifest " + manifest_path.string() + "\n";
      return out;
    });
  });
}

}  // namespace cairn::module_tool
