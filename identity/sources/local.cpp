#include "identity/sources/local.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/time.hpp"
#include "identity/cascade.hpp"

namespace cairn::identity {
namespace {

constexpr std::size_t kMaxBytes = 64 * 1024;

// The UUID of an identity.json, or why the file cannot be one.
Result<Uuid> parse_identity_file(std::string_view text) {
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return fail(Errc::data, "empty file");
  }
  auto json = parse_json(text, "identity.json");
  if (!json) return fail(json.error());
  if (!json->is_object() || !json->contains("uuid") || !(*json)["uuid"].is_string()) {
    return fail(Errc::data, "no \"uuid\" string");
  }
  return parse_identity_uuid((*json)["uuid"].get<std::string>());
}

std::string_view file_type(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

Error not_regular(const std::filesystem::path& path, mode_t mode) {
  return Error{Errc::io, path.string() + " is " + std::string(file_type(mode)) +
                             ", not a regular file: refused (never opened)",
               "remove it; the agent then writes a new identity.json"};
}

// The file's content, nullopt when it does not exist. Anything but a regular file (FIFO,
// directory, device, socket) is refused from its stat, before any open: a FIFO would
// block the boot and a device read may have side effects. The open itself is
// O_NONBLOCK and checked again with fstat, so a file swapped in between cannot block it.
Result<std::optional<std::string>> read_identity_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<std::string>{};
    return fail(Errc::io, "stat " + path.string() + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return fail(not_regular(path, st.st_mode));
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) return fail(Errc::io, "open " + path.string() + ": " + std::strerror(errno));
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail(not_regular(path, st.st_mode));
  }
  std::string out;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errc::io, "read " + path.string() + ": " + std::strerror(errno));
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > kMaxBytes) {
      return fail(Errc::data, "larger than the limit of " + std::to_string(kMaxBytes) + " bytes");
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  return std::optional<std::string>(std::move(out));
}

// Renames a corrupt file to <name>.corrupt-<unix seconds>, never over an earlier one.
Result<std::filesystem::path> set_aside(const std::filesystem::path& path, const Clock& clock) {
  const auto secs =
      std::chrono::duration_cast<std::chrono::seconds>(clock.now().time_since_epoch()).count();
  auto aside = path;
  aside += ".corrupt-" + std::to_string(secs);
  for (int n = 1; std::filesystem::exists(aside) && n < 100; ++n) {
    aside = path;
    aside += ".corrupt-" + std::to_string(secs) + "-" + std::to_string(n);
  }
  if (std::rename(path.c_str(), aside.c_str()) != 0) {
    return fail(Errc::io, "rename " + path.string() + " to " + aside.string() + ": " +
                              std::strerror(errno),
                "move the corrupt identity.json away by hand");
  }
  return aside;
}

}  // namespace

SourceResult LocalSource::probe(Context& context) {
  const auto path = context.config().identity_file();
  std::string corrupt_note;
  auto content = read_identity_file(path);
  if (!content && content.error().code != Errc::data) {
    return SourceResult::failed(content.error());  // unreadable: never replace what we cannot read
  }
  if (!content || *content) {
    auto uuid = content ? parse_identity_file(**content) : fail(content.error());
    if (uuid) {
      Identity id;
      id.uuid = *uuid;
      id.platform = context.hint().platform();
      return SourceResult::answered(std::move(id), "kept in " + path.string());
    }
    auto aside = set_aside(path, context.clock());
    if (!aside) return SourceResult::failed(aside.error());
    corrupt_note = path.string() + " was corrupt (" + uuid.error().message + "), kept aside as " +
                   aside->filename().string() + "; ";
  }

  const Uuid uuid = random_uuid();
  const Json doc = {{"uuid", uuid.str()}, {"created", format_rfc3339(context.clock().now())}};
  if (auto written = write_file_atomic(path, dump_json(doc, 2) + "\n", 0644); !written) {
    return SourceResult::failed(Error{Errc::io, corrupt_note + written.error().message,
                                      "make the persist directory writable or pass --persist DIR"});
  }
  Identity id;
  id.uuid = uuid;
  id.platform = context.hint().platform();
  return SourceResult::answered(std::move(id),
                                corrupt_note + "created " + path.string() + " with a random UUID");
}

}  // namespace cairn::identity
