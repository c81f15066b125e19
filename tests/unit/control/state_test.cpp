#include <doctest/doctest.h>

#include <sys/stat.h>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "control/ca.hpp"
#include "control/service.hpp"
#include "control/state.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::test;

namespace {

mode_t mode_of(const std::filesystem::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string read(const std::filesystem::path& p) {
  auto r = read_file(p, 1 << 20);
  REQUIRE(r);
  return *r;
}

}  // namespace

TEST_CASE("init writes the CA, server and admin credentials with 0600 keys") {
  TempDir dir;
  ManualClock clock;
  const control::StatePaths state{dir.path() / "state"};
  control::InitOptions options;
  options.server_dns_names = {"control.example"};
  options.server_ips = {"127.0.0.2"};
  options.admin_name = "alice";
  auto report = control::init_state(state, options, clock);
  REQUIRE_MESSAGE(report, (report ? "" : report.error().message));
  CHECK(report->written.size() == 7);  // + escrow.key, shared by replicas copied from this dir
  CHECK(report->created_ca);
  CHECK(mode_of(state.dir) == 0700);
  CHECK(mode_of(state.dir / "escrow.key") == 0600);
  for (const auto& key : {state.ca_key(), state.server_key(), state.admin_key()}) {
    CHECK(mode_of(key) == 0600);
    CHECK(parse_private_key_pem(read(key)));
  }
  const std::string ca_pem = read(state.ca_cert());

  auto chain = parse_cert_chain_pem(read(state.server_cert()));
  REQUIRE(chain);
  REQUIRE(chain->size() == 2);  // leaf, then the CA
  CHECK(cert_info((*chain)[1].get()).fingerprint_sha256 == report->ca_fingerprint_sha256);
  X509* server = (*chain)[0].get();
  CHECK(verify_cert_chain(server, ca_pem, clock.now()));
  CHECK(X509_check_host(server, "localhost", 0, 0, nullptr) == 1);
  CHECK(X509_check_host(server, "control.example", 0, 0, nullptr) == 1);
  CHECK(X509_check_ip_asc(server, "127.0.0.1", 0) == 1);
  CHECK(X509_check_ip_asc(server, "::1", 0) == 1);
  CHECK(X509_check_ip_asc(server, "127.0.0.2", 0) == 1);
  CHECK((X509_get_extended_key_usage(server) & XKU_SSL_SERVER) != 0);
  auto server_key = parse_private_key_pem(read(state.server_key()));
  REQUIRE(server_key);
  CHECK(X509_check_private_key(server, server_key->get()) == 1);

  auto admin = parse_cert_pem(read(state.admin_cert()));
  REQUIRE(admin);
  CHECK(cert_info(admin->get()).subject_cn == "admin:alice");
  CHECK(verify_cert_chain(admin->get(), ca_pem, clock.now()));
  CHECK((X509_get_extended_key_usage(admin->get()) & XKU_SSL_CLIENT) != 0);
  CHECK(control::CertificateAuthority::load(state));
}

TEST_CASE("init refuses to overwrite an existing state dir unless forced and the CA replacement confirmed") {
  TempDir dir;
  ManualClock clock;
  const control::StatePaths state{dir.path()};
  REQUIRE(control::init_state(state, {}, clock));
  const std::string ca_before = read(state.ca_cert());
  auto again = control::init_state(state, {}, clock);
  REQUIRE(!again);
  CHECK(again.error().code == Errc::config);
  CHECK(again.error().hint.find("--force") != std::string::npos);
  CHECK(read(state.ca_cert()) == ca_before);

  // --force alone refuses: a new CA orphans every enrolled node.
  control::InitOptions force;
  force.force = true;
  auto forced = control::init_state(state, force, clock);
  REQUIRE(!forced);
  CHECK(forced.error().code == Errc::config);
  CHECK(forced.error().message.find("orphan") != std::string::npos);
  CHECK(forced.error().hint.find("--yes-replace-ca") != std::string::npos);
  CHECK(read(state.ca_cert()) == ca_before);

  force.yes_replace_ca = true;
  REQUIRE(control::init_state(state, force, clock));
  CHECK(read(state.ca_cert()) != ca_before);
}

TEST_CASE("init imports an operator's CA and refuses a key that does not match") {
  TempDir dir;
  ManualClock clock;
  const control::StatePaths first{dir.path() / "first"};
  REQUIRE(control::init_state(first, {}, clock));

  control::InitOptions options;
  options.ca_cert_file = first.ca_cert();
  options.ca_key_file = first.ca_key();
  const control::StatePaths second{dir.path() / "second"};
  auto report = control::init_state(second, options, clock);
  REQUIRE_MESSAGE(report, (report ? "" : report.error().message));
  CHECK(!report->created_ca);
  CHECK(read(second.ca_cert()) == read(first.ca_cert()));

  const control::StatePaths other{dir.path() / "other"};
  REQUIRE(control::init_state(other, {}, clock));
  options.ca_key_file = other.ca_key();
  auto mismatch = control::init_state(control::StatePaths{dir.path() / "third"}, options, clock);
  REQUIRE(!mismatch);
  CHECK(mismatch.error().code == Errc::config);

  // a leaf certificate is not a CA
  options.ca_cert_file = first.admin_cert();
  options.ca_key_file = first.admin_key();
  auto leaf = control::init_state(control::StatePaths{dir.path() / "fourth"}, options, clock);
  REQUIRE(!leaf);
  CHECK(leaf.error().code == Errc::config);
}

TEST_CASE("init refuses SANs and admin names that are not what they claim") {
  TempDir dir;
  ManualClock clock;
  const control::StatePaths state{dir.path()};
  struct Case {
    std::vector<std::string> dns, ips;
    std::string admin;
  };
  const Case cases[] = {
      {{"a,IP:1.2.3.4"}, {}, "admin"},
      {{}, {"not-an-ip"}, "admin"},
      {{}, {}, "bad name"},
      {{}, {}, ""},
      {{}, {}, std::string(control::kMaxAdminNameBytes + 1, 'a')},  // "admin:" + it > 64-byte CN
  };
  for (const auto& c : cases) {
    control::InitOptions o;
    o.server_dns_names = c.dns;
    o.server_ips = c.ips;
    o.admin_name = c.admin;
    auto r = control::init_state(state, o, clock);
    REQUIRE(!r);
    CHECK(r.error().code == Errc::usage);
  }
  CHECK(!std::filesystem::exists(state.ca_cert()));

  control::InitOptions longest;
  longest.admin_name = std::string(control::kMaxAdminNameBytes, 'a');
  auto ok = control::init_state(state, longest, clock);
  REQUIRE_MESSAGE(ok, (ok ? "" : ok.error().message));
  CHECK(ok->admin_cn.size() == kMaxCommonNameBytes);
}

TEST_CASE("serve cannot open a state dir that was never initialized") {
  TempDir dir;
  ManualClock clock;
  auto s = control::open_service(control::StatePaths{dir.path()}, {}, clock);
  REQUIRE(!s);
  CHECK(s.error().code == Errc::config);
  CHECK(s.error().hint.find("cairn-control init") != std::string::npos);
}
