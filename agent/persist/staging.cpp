#include "agent/persist/staging.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "agent/enroll/credentials.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"

namespace cairn::agent::persist {
namespace {

constexpr std::size_t kMaxPemBytes = 64 * 1024;

// Zeros over the file's bytes, on the medium before it is unlinked.
Status overwrite_with_zeros(const std::filesystem::path& file) {
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return fail(Errc::io, "wiping " + file.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail(Errc::io, "wiping " + file.string() + ": " + std::strerror(errno));
  const std::vector<char> zeros(4096, 0);
  off_t done = 0;
  while (done < st.st_size) {
    const auto n = ::pwrite(fd.get(), zeros.data(), std::min<std::size_t>(zeros.size(), static_cast<std::size_t>(st.st_size - done)), done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(Errc::io, "wiping " + file.string() + ": " + std::strerror(errno));
    done += n;
  }
  if (::fsync(fd.get()) != 0) return fail(Errc::io, "wiping " + file.string() + ": fsync: " + std::strerror(errno));
  return {};
}

}  // namespace

std::filesystem::path staging_persist_dir(const Root& root) { return root / "run/cairn/credentials"; }

AgentConfig staged_config(const AgentConfig& config) {
  AgentConfig staged = config;
  staged.persist_dir = staging_persist_dir(config.root);
  return staged;
}

Status prepare_staging(const AgentConfig& config) {
  const auto dir = staging_persist_dir(config.root);
  for (const auto& d : {dir, staged_config(config).state_dir()}) {
    if (auto ok = make_dirs(d, 0700); !ok) return fail(ok.error().with_context("escrow credentials staging"));
    // An existing dir keeps its mode through make_dirs: make sure it is ours alone.
    if (::chmod(d.c_str(), 0700) != 0) {
      return fail(Errc::io, "escrow credentials staging " + d.string() + ": chmod: " + std::strerror(errno));
    }
  }
  return {};
}

Status wipe_staging(const AgentConfig& config) {
  const auto dir = staging_persist_dir(config.root);
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return {};
  // Private keys first (never following a link), then the whole tree.
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file() && !it->is_symlink() && it->path().filename() == "node.key") {
      if (auto ok = overwrite_with_zeros(it->path()); !ok) return ok;
    }
  }
  if (ec) return fail(Errc::io, "wiping " + dir.string() + ": " + ec.message());
  std::filesystem::remove_all(dir, ec);
  if (ec) return fail(Errc::io, "removing " + dir.string() + ": " + ec.message(), "remove it by hand (rm -rf)");
  return {};
}

Result<MovedCredentials> move_staged_credentials(const AgentConfig& config) {
  const auto staged = staged_config(config).state_dir();
  auto loaded = CredentialStore(staged).load();
  if (!loaded) return fail(loaded.error().with_context("staged credentials"));
  if (!*loaded) {
    if (auto ok = wipe_staging(config); !ok) return fail(ok.error());
    return MovedCredentials{};
  }
  const auto& files = (*loaded)->files;
  auto key = read_file(files.key(), kMaxPemBytes);
  if (!key) return fail(key.error().with_context("staged credentials"));
  auto cert = read_file(files.cert(), kMaxPemBytes);
  if (!cert) return fail(cert.error().with_context("staged credentials"));
  if (auto ok = make_dirs(config.state_dir(), 0700); !ok) return fail(ok.error());
  if (auto ok = CredentialStore(config.state_dir()).install({*key, *cert, (*loaded)->ca_pem}); !ok) {
    return fail(ok.error().with_context("installing the staged credentials on " + config.state_dir().string()));
  }
  std::fill(key->begin(), key->end(), '\0');
  auto record = read_file_if_exists(staged / "enrollment.json", kMaxPemBytes);
  if (!record) return fail(record.error());
  if (*record) {
    if (auto ok = write_file_atomic(config.state_dir() / "enrollment.json", **record); !ok) return fail(ok.error());
  }
  if (auto ok = wipe_staging(config); !ok) return fail(ok.error());
  log::info("persist.credentials_moved", {{"serial", (*loaded)->cert.serial_hex}, {"to", config.state_dir().string()}});
  return MovedCredentials{true, (*loaded)->cert.serial_hex};
}

Error escrow_enroll_error(const Error& error, std::string_view node_id) {
  if (error.code != Errc::refused) return error;
  const std::string id(node_id);
  return Error{Errc::refused,
               error.message +
                   "; key_source escrow: this node's credentials are on its locked /persist volume, so every boot "
                   "enrolls again into tmpfs to fetch the volume key, and control refused this enrollment",
               "on the control host, allow it once: `cairn-control node allow-reenroll " + id +
                   "` (within the hour), or for the node's boots: `cairn-control token create --expect-id " + id +
                   " --uses N` given as cairn.token= (kernel command line or fw-cfg); the volume was not touched"};
}

Result<EscrowOpenOutcome> open_escrow_volume(const AgentConfig& config, const VolumeConfig& volume, VolumeDeps& deps) {
  auto opened = open_volume(volume, deps);
  if (!opened) return fail(opened.error());
  auto moved = move_staged_credentials(config);
  if (!moved) return fail(moved.error().with_context("moving the enrollment credentials onto " + config.persist_dir.string()));
  return EscrowOpenOutcome{std::move(*opened), *moved};
}

}  // namespace cairn::agent::persist
