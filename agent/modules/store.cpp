#include "agent/modules/store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/module/fsverity.hpp"

namespace cairn::agent::modules {
namespace {

constexpr std::size_t kMaxStateBytes = 4 << 20;
constexpr std::string_view kPrefix = "sha256:";

bool is_hex64(std::string_view s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

}  // namespace

Json to_json(const AttachedModule& m) {
  return {{"name", m.name}, {"version", m.version}, {"priority", m.priority}, {"required", m.required},
          {"depends", m.depends}, {"image_digest", m.image_digest}, {"fsverity_digest", m.fsverity_digest},
          {"manifest_digest", m.manifest_digest}, {"signature_digest", m.signature_digest},
          {"key_id", m.key_id}, {"source", m.source}, {"verity", m.verity}, {"attached_at", m.attached_at}};
}

Result<AttachedModule> attached_module_from_json(const Json& j) {
  try {
    AttachedModule m;
    m.name = j.at("name").get<std::string>();
    m.version = j.at("version").get<std::string>();
    m.priority = j.at("priority").get<std::int64_t>();
    m.required = j.value("required", false);
    m.depends = j.value("depends", std::vector<std::string>{});
    m.image_digest = j.at("image_digest").get<std::string>();
    m.fsverity_digest = j.value("fsverity_digest", "");
    m.manifest_digest = j.at("manifest_digest").get<std::string>();
    m.signature_digest = j.at("signature_digest").get<std::string>();
    m.key_id = j.value("key_id", "");
    m.source = j.value("source", "");
    m.verity = j.value("verity", "");
    m.attached_at = j.value("attached_at", "");
    return m;
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string("attached module entry: ") + e.what());
  }
}

Result<std::filesystem::path> ModuleStore::blob_path(std::string_view digest) const {
  if (!digest.starts_with(kPrefix) || !is_hex64(digest.substr(kPrefix.size()))) {
    return fail(Errc::data, "digest '" + std::string(digest) + "': not sha256:<64 lower-case hex>");
  }
  return dir_ / "blobs/sha256" / std::string(digest.substr(kPrefix.size()));
}

bool ModuleStore::has_blob(std::string_view digest) const {
  auto p = blob_path(digest);
  std::error_code ec;
  return p && std::filesystem::is_regular_file(*p, ec);
}

Result<std::string> ModuleStore::put_bytes(std::string_view bytes) {
  const std::string digest = std::string(kPrefix) + sha256_hex(bytes);
  auto p = blob_path(digest);
  if (!p) return fail(p.error());
  if (has_blob(digest)) return digest;
  if (auto ok = write_file_atomic(*p, bytes, 0644); !ok) return fail(ok.error());
  return digest;
}

Result<std::string> ModuleStore::read_blob(std::string_view digest, std::size_t max_bytes) const {
  auto p = blob_path(digest);
  if (!p) return fail(p.error());
  auto bytes = read_file(*p, max_bytes);
  if (!bytes) return fail(bytes.error());
  if (std::string(kPrefix) + sha256_hex(*bytes) != digest) {
    return fail(Errc::data, "store blob " + std::string(digest) + " changed on disk (sha256 differs)", "attach the module again");
  }
  return bytes;
}

Result<std::string> ModuleStore::put_file(const std::filesystem::path& src, std::uint64_t max_bytes) {
  UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!in) return fail(Errc::io, "open " + src.string() + ": " + std::strerror(errno));
  const auto tmp_dir = dir_ / "blobs/tmp";
  if (auto ok = make_dirs(tmp_dir); !ok) return fail(ok.error());
  if (auto ok = make_dirs(dir_ / "blobs/sha256"); !ok) return fail(ok.error());
  const auto tmp = tmp_dir / ("import-" + random_hex(8));
  UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!out) return fail(Errc::io, "create " + tmp.string() + ": " + std::strerror(errno));
  const auto cleanup = [&] {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
  };
  module::Sha256Stream sha;
  std::string buf(1 << 20, '\0');
  for (;;) {
    const ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      cleanup();
      return fail(Errc::io, "read " + src.string() + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    if (sha.size() + static_cast<std::uint64_t>(n) > max_bytes) {
      cleanup();
      return fail(Errc::data, src.string() + ": larger than " + std::to_string(max_bytes) + " bytes");
    }
    sha.update(buf.data(), static_cast<std::size_t>(n));
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(out.get(), buf.data() + done, static_cast<std::size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        cleanup();
        return fail(Errc::io, "write " + tmp.string() + ": " + std::strerror(errno));
      }
      done += w;
    }
  }
  if (::fsync(out.get()) != 0) {
    cleanup();
    return fail(Errc::io, "fsync " + tmp.string() + ": " + std::strerror(errno));
  }
  out.reset();
  const std::string digest = std::string(kPrefix) + sha.finish_hex();
  auto dest = blob_path(digest);
  if (!dest) return fail(dest.error());
  std::error_code ec;
  std::filesystem::rename(tmp, *dest, ec);
  if (ec) {
    cleanup();
    return fail(Errc::io, "rename " + tmp.string() + " to " + dest->string() + ": " + ec.message());
  }
  (void)fsync_dir(dest->parent_path());
  return digest;
}

Result<std::vector<AttachedModule>> ModuleStore::load_attached() const {
  const auto path = dir_ / "state.json";
  auto text = read_file_if_exists(path, kMaxStateBytes);
  if (!text) return fail(text.error());
  std::vector<AttachedModule> out;
  if (!*text) return out;
  auto j = parse_json(**text, path.string());
  if (!j) return fail(j.error());
  auto it = j->find("attached");
  if (!j->is_object() || it == j->end() || !it->is_array()) {
    return fail(Errc::data, path.string() + ": no \"attached\" list", "restore it or detach and attach the modules again");
  }
  for (const auto& e : *it) {
    auto m = attached_module_from_json(e);
    if (!m) return fail(m.error().with_context(path.string()));
    out.push_back(std::move(*m));
  }
  return out;
}

Status ModuleStore::save_attached(const std::vector<AttachedModule>& modules) {
  Json list = Json::array();
  for (const auto& m : modules) list.push_back(to_json(m));
  return write_file_atomic(dir_ / "state.json", dump_json({{"attached", list}}, 2) + "\n", 0644);
}

Result<std::size_t> ModuleStore::collect_garbage(const std::vector<AttachedModule>& attached) {
  std::set<std::string> keep;
  for (const auto& m : attached) {
    for (const auto* d : {&m.image_digest, &m.manifest_digest, &m.signature_digest}) {
      if (d->starts_with(kPrefix)) keep.insert(d->substr(kPrefix.size()));
    }
  }
  std::size_t removed = 0;
  for (const auto* sub : {"blobs/sha256", "blobs/tmp"}) {
    std::error_code ec;
    const auto dir = dir_ / sub;
    if (!std::filesystem::exists(dir, ec)) continue;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (keep.contains(e.path().filename().string())) continue;
      std::error_code rm;
      if (std::filesystem::remove(e.path(), rm)) {
        ++removed;
        log::info("modules.gc", {{"removed", e.path().filename().string()}});
      } else if (rm) {
        return fail(Errc::io, "remove " + e.path().string() + ": " + rm.message());
      }
    }
    if (ec) return fail(Errc::io, "list " + dir.string() + ": " + ec.message());
  }
  return removed;
}

}  // namespace cairn::agent::modules
