#include <doctest/doctest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>

#include "agent/enroll/credentials.hpp"
#include "agent/enroll/enroll.hpp"
#include "common/crypto.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

namespace {

struct Pki {
  EvpPkey ca_key = *generate_key(KeyType::p256);
  X509Ptr ca;
  std::string ca_pem;
  Pki() {
    const auto now = system_clock::now();
    ca = *issue_certificate({.common_name = "test CA", .not_before = now - hours(1), .not_after = now + hours(48), .is_ca = true},
                            ca_key.get(), nullptr, ca_key.get());
    ca_pem = *cert_pem(ca.get());
  }
  NewCredentials issue(const std::string& cn, system_clock::duration lifetime) const {
    auto key = *generate_key(KeyType::ed25519);
    const auto now = system_clock::now();
    auto cert = *issue_certificate({.common_name = cn, .not_before = now - seconds(1), .not_after = now + lifetime, .client_auth = true},
                                   key.get(), ca.get(), ca_key.get());
    return {*private_key_pem(key.get()), *cert_pem(cert.get()), ca_pem};
  }
};

const char* kNode = "4c4c4544-0042-3510-8053-b7c04f4e4b32";

}  // namespace

TEST_CASE("a fresh store has no credentials; install makes a set current with a 0600 key") {
  test::TempDir dir;
  CredentialStore store(dir.path());
  REQUIRE(store.load());
  CHECK_FALSE(store.load()->has_value());
  Pki pki;
  REQUIRE(store.install(pki.issue(kNode, hours(1))));
  auto loaded = store.load();
  REQUIRE(loaded);
  REQUIRE(loaded->has_value());
  CHECK((*loaded)->cert.subject_cn == kNode);
  struct stat st {};
  REQUIRE(::stat((*loaded)->files.key().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(credentials_problem(**loaded, kNode, system_clock::now()).empty());
}

TEST_CASE("installing a new set swaps current and keeps a bounded archive") {
  test::TempDir dir;
  CredentialStore store(dir.path());
  Pki pki;
  std::string last_serial;
  for (int i = 0; i < 6; ++i) {
    REQUIRE(store.install(pki.issue(kNode, hours(1))));
    auto loaded = *store.load();
    CHECK(loaded->cert.serial_hex != last_serial);
    last_serial = loaded->cert.serial_hex;
  }
  int sets = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() / "certs")) {
    if (e.is_directory() && !e.is_symlink()) ++sets;
  }
  CHECK(sets == 1 + CredentialStore::kArchiveKept);
  CHECK(std::filesystem::read_symlink(dir.path() / "certs/current").string() == last_serial);
}

TEST_CASE("installed credentials are refused when expired, for another node or from another CA") {
  test::TempDir dir;
  CredentialStore store(dir.path());
  Pki pki;
  REQUIRE(store.install(pki.issue(kNode, seconds(30))));
  auto creds = **store.load();
  CHECK(credentials_problem(creds, "00000000-0000-4000-8000-000000000001", system_clock::now()).find("for node") != std::string::npos);
  CHECK(credentials_problem(creds, kNode, system_clock::now() + minutes(5)).find("expired") != std::string::npos);
  Pki other;
  creds.ca_pem = other.ca_pem;
  const auto problem = credentials_problem(creds, kNode, system_clock::now());
  CHECK_MESSAGE(problem.find("does not verify") != std::string::npos, problem);
}

TEST_CASE("a certificate that does not parse is refused before anything is written") {
  test::TempDir dir;
  CredentialStore store(dir.path());
  auto r = store.install({"key", "not a certificate", "ca"});
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::data);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "certs/current"));
}
