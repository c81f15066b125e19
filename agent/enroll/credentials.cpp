#include "agent/enroll/credentials.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"

namespace cairn::agent {
namespace {

constexpr std::size_t kMaxPemBytes = 64 * 1024;

}  // namespace

CredentialStore::CredentialStore(std::filesystem::path state_dir) : certs_dir_(std::move(state_dir) / "certs") {}

Result<std::optional<InstalledCredentials>> CredentialStore::load() const {
  const auto files = current();
  auto cert_pem = read_file_if_exists(files.cert(), kMaxPemBytes);
  if (!cert_pem) return fail(cert_pem.error());
  if (!*cert_pem) return std::optional<InstalledCredentials>{};
  auto cert = parse_cert_pem(**cert_pem);
  if (!cert) return fail(cert.error().with_context(files.cert().string()));
  auto ca = read_file(files.ca(), kMaxPemBytes);
  if (!ca) return fail(ca.error());
  if (::access(files.key().c_str(), R_OK) != 0) {
    return fail(Errc::io, files.key().string() + ": " + std::strerror(errno),
                "the credential set is incomplete; enroll again with --force");
  }
  return std::optional<InstalledCredentials>(InstalledCredentials{files, cert_info(cert->get()), std::move(*ca)});
}

Status CredentialStore::install(const NewCredentials& creds) {
  auto cert = parse_cert_pem(creds.cert_pem);
  if (!cert) return fail(cert.error().with_context("new certificate"));
  const std::string serial = cert_info(cert->get()).serial_hex;
  const CredentialFiles target{certs_dir_ / serial};
  if (auto made = make_dirs(target.dir, 0700); !made) return made;
  if (auto w = write_file_atomic(target.key(), creds.key_pem, 0600); !w) return w;
  if (auto w = write_file_atomic(target.cert(), creds.cert_pem, 0644); !w) return w;
  if (auto w = write_file_atomic(target.ca(), creds.ca_pem, 0644); !w) return w;

  // Swap certs/current: a new symlink under a temp name, renamed over the old one.
  const auto tmp_link = certs_dir_ / ".current.tmp";
  ::unlink(tmp_link.c_str());
  if (::symlink(serial.c_str(), tmp_link.c_str()) != 0) {
    return fail(Errc::io, "symlink " + tmp_link.string() + ": " + std::strerror(errno));
  }
  if (::rename(tmp_link.c_str(), current().dir.c_str()) != 0) {
    return fail(Errc::io, "rename " + tmp_link.string() + ": " + std::strerror(errno));
  }
  if (auto synced = fsync_dir(certs_dir_); !synced) return synced;

  // Prune the archive: keep the newest kArchiveKept sets besides the current one.
  std::vector<std::filesystem::directory_entry> sets;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(certs_dir_, ec)) {
    if (e.is_directory() && !e.is_symlink() && e.path().filename() != serial) sets.push_back(e);
  }
  std::sort(sets.begin(), sets.end(), [](const auto& a, const auto& b) {
    std::error_code e1, e2;
    return a.last_write_time(e1) > b.last_write_time(e2);
  });
  for (std::size_t i = kArchiveKept; i < sets.size(); ++i) {
    std::filesystem::remove_all(sets[i].path(), ec);
    if (ec) log::warn("credentials.prune_failed", {{"dir", sets[i].path().string()}, {"error", ec.message()}});
  }
  return {};
}

}  // namespace cairn::agent
