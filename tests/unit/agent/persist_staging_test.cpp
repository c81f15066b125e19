// Escrow mode's boot order (issue 15): the node enrolls into tmpfs, the volume key is fetched
// with those credentials, and once the volume is open they move onto it and the tmpfs copy is
// wiped. With the persist fakes and a real credential store on a temp dir.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "agent/boot/stages.hpp"
#include "agent/enroll/credentials.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/persist/staging.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/persist_fakes.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace cairn::agent::persist;

namespace {

const char* kNode = "7d0e8f52-3a41-4c1b-9d7e-2f6a4b8c1e90";

mode_t mode_of(const std::filesystem::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

// The escrow key as control hands it out: only to a caller holding the node's certificate,
// here the staged one (what ControlEscrow is given by the boot).
class StagedEscrow final : public EscrowSource {
 public:
  explicit StagedEscrow(std::filesystem::path staged_state_dir) : dir_(std::move(staged_state_dir)) {}
  Result<Secret> fetch() override {
    ++fetches;
    if (!available) return fail(Errc::unavailable, "control did not answer");
    auto creds = CredentialStore(dir_).load();
    if (!creds || !*creds) return fail(Errc::refused, "POST /v1/persist/escrow-key: 401 client_cert_required");
    seen_serials.push_back((*creds)->cert.serial_hex);
    return Secret(std::string(32, 'e'));
  }
  bool available = true;
  int fetches = 0;
  std::vector<std::string> seen_serials;

 private:
  std::filesystem::path dir_;
};

struct EscrowNode {
  test::TempDir dir;
  test::ManualClock clock;
  AgentConfig config;
  EvpPkey ca_key = *generate_key(KeyType::p256);
  X509Ptr ca;
  test::FakeCrypt crypt;
  test::FakeHost host;
  std::unique_ptr<StagedEscrow> escrow;
  VolumeConfig volume;
  VolumeDeps deps;

  EscrowNode() {
    log::set_min_level(log::Level::critical);
    config.root = Root(dir.path());
    config.persist_dir = dir.path() / "persist";
    config.control_url = "https://control.test:8443";
    config.persist.key_source = "escrow";
    const auto now = clock.now();
    ca = *issue_certificate({.common_name = "test CA", .not_before = now - std::chrono::hours(1),
                             .not_after = now + std::chrono::hours(24 * 365), .is_ca = true},
                            ca_key.get(), nullptr, ca_key.get());
    escrow = std::make_unique<StagedEscrow>(staged_config(config).state_dir());
    volume.key_source = KeySource::escrow;
    volume.node_id = kNode;
    volume.mount_point = config.persist_dir;
    deps.crypt = &crypt;
    deps.host = &host;
    deps.escrow = escrow.get();
    deps.now_rfc3339 = [] { return std::string("2026-11-30T12:00:00Z"); };
  }

  // What enroll() leaves in the staged state dir: a set and enrollment.json. Returns the serial.
  std::string enroll_into_tmpfs() {
    REQUIRE(prepare_staging(config).has_value());
    auto key = generate_key(KeyType::ed25519);
    REQUIRE(key.has_value());
    const auto now = clock.now();
    auto cert = issue_certificate({.common_name = kNode, .not_before = now - std::chrono::hours(1),
                                   .not_after = now + std::chrono::hours(100), .client_auth = true},
                                  key->get(), ca.get(), ca_key.get());
    REQUIRE(cert.has_value());
    const auto staged = staged_config(config).state_dir();
    REQUIRE(CredentialStore(staged).install({*private_key_pem(key->get()), *cert_pem(cert->get()), *cert_pem(ca.get())})
                .has_value());
    REQUIRE(write_file_atomic(staged / "enrollment.json",
                              "{\"node_id\": \"" + std::string(kNode) + "\", \"control_url\": \"" + config.control_url +
                                  "\"}\n")
                .has_value());
    return cert_info(cert->get()).serial_hex;
  }
};

}  // namespace

TEST_CASE("escrow boot order: enroll before persist, unless diskless, TPM-keyed or already mounted") {
  using boot::BootOrder;
  CHECK(boot::boot_order("disk", "escrow", false) == BootOrder::escrow);
  CHECK(boot::stage_order(BootOrder::escrow) == std::vector<std::string>{"identity", "enroll", "persist", "modules"});
  CHECK(boot::boot_order("disk", "tpm", false) == BootOrder::standard);
  CHECK(boot::boot_order("tmpfs", "escrow", false) == BootOrder::standard);
  CHECK(boot::boot_order("disk", "escrow", true) == BootOrder::standard);
  CHECK(boot::stage_order(BootOrder::standard) == std::vector<std::string>{"identity", "persist", "enroll", "modules"});
}

TEST_CASE("first escrow boot: the key is fetched with the tmpfs credentials, which then move onto /persist") {
  EscrowNode n;
  const auto serial = n.enroll_into_tmpfs();
  const auto staging = staging_persist_dir(n.config.root);
  CHECK(staging == n.dir.path() / "run/cairn/credentials");
  CHECK(mode_of(staging) == 0700);
  CHECK(mode_of(staged_config(n.config).state_dir()) == 0700);
  CHECK(mode_of(staged_config(n.config).state_dir() / "certs/current/node.key") == 0600);

  auto out = open_escrow_volume(n.config, n.volume, n.deps);
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->volume.action == VolumeOutcome::Action::formatted);
  CHECK(n.escrow->seen_serials == std::vector<std::string>{serial});
  CHECK(out->credentials.moved);
  CHECK(out->credentials.serial == serial);

  // On /persist now, as enroll would have left them there; nothing left in tmpfs.
  auto installed = CredentialStore(n.config.state_dir()).load();
  REQUIRE(installed.has_value());
  REQUIRE(installed->has_value());
  CHECK((*installed)->cert.serial_hex == serial);
  CHECK(mode_of((*installed)->files.key()) == 0600);
  CHECK(mode_of(n.config.state_dir()) == 0700);
  auto url = enrolled_control_url([&] {
    AgentConfig c = n.config;
    c.control_url.clear();
    return c;
  }());
  REQUIRE(url.has_value());
  CHECK(*url == n.config.control_url);
  CHECK_FALSE(std::filesystem::exists(staging));
}

TEST_CASE("a volume that does not open keeps the tmpfs credentials for the next attempt; enroll is not repeated") {
  EscrowNode n;
  const auto serial = n.enroll_into_tmpfs();
  n.escrow->available = false;
  auto down = open_escrow_volume(n.config, n.volume, n.deps);
  REQUIRE_FALSE(down.has_value());
  CHECK(down.error().code == Errc::unavailable);
  CHECK(std::filesystem::exists(staged_config(n.config).state_dir() / "certs/current/node.crt"));
  CHECK(n.crypt.formats == 0);

  // The next attempt of the enroll stage finds the staged set: already enrolled, no token used
  // (there is none here, and control.test does not exist: any request would fail).
  protocol::NodeIdentity identity;
  identity.node_id = kNode;
  auto again = enroll(staged_config(n.config), identity, EnrollOptions{}, n.clock);
  REQUIRE_MESSAGE(again.has_value(), again.error().message);
  CHECK(again->already_enrolled);

  n.escrow->available = true;
  auto up = open_escrow_volume(n.config, n.volume, n.deps);
  REQUIRE_MESSAGE(up.has_value(), up.error().message);
  CHECK(up->credentials.serial == serial);
}

TEST_CASE("later escrow boot: the set enrolled into tmpfs becomes current on /persist, the old one is archived") {
  EscrowNode n;
  const auto first = n.enroll_into_tmpfs();
  REQUIRE(open_escrow_volume(n.config, n.volume, n.deps).has_value());

  // Reboot: tmpfs and the mapping are gone; the node enrolled again into tmpfs (control allowed
  // it: a token bound to its id, or allow-reenroll).
  n.crypt.active.clear();
  n.clock.advance(std::chrono::seconds(5));
  const auto second = n.enroll_into_tmpfs();
  REQUIRE(second != first);
  auto out = open_escrow_volume(n.config, n.volume, n.deps);
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->volume.action == VolumeOutcome::Action::opened);
  CHECK(n.crypt.formats == 1);
  CHECK(n.escrow->seen_serials == std::vector<std::string>{first, second});
  auto installed = CredentialStore(n.config.state_dir()).load();
  REQUIRE(installed.has_value());
  REQUIRE(installed->has_value());
  CHECK((*installed)->cert.serial_hex == second);
  CHECK(std::filesystem::exists(n.config.state_dir() / "certs" / first / "node.crt"));

  // Nothing staged (a re-run after the move): nothing to do.
  auto rerun = move_staged_credentials(n.config);
  REQUIRE(rerun.has_value());
  CHECK_FALSE(rerun->moved);
}

TEST_CASE("the tmpfs copy of the private key is overwritten before it is removed") {
  EscrowNode n;
  n.enroll_into_tmpfs();
  const auto key = staged_config(n.config).state_dir() / "certs/current/node.key";
  // A second name for the same inode shows what happened to its bytes.
  const auto witness = n.dir.path() / "witness";
  REQUIRE(::link(std::filesystem::canonical(key).c_str(), witness.c_str()) == 0);
  const auto before = read_file(witness, 65536);
  REQUIRE(before.has_value());
  REQUIRE(before->find("PRIVATE KEY") != std::string::npos);
  REQUIRE(wipe_staging(n.config).has_value());
  CHECK_FALSE(std::filesystem::exists(staging_persist_dir(n.config.root)));
  const auto after = read_file(witness, 65536);
  REQUIRE(after.has_value());
  CHECK(after->size() == before->size());
  CHECK(*after == std::string(before->size(), '\0'));
}

TEST_CASE("an escrow node whose re-enrollment control refuses is told what the operator can do") {
  const Error node_exists{Errc::refused, "enroll: POST /v1/enroll: 409 node_exists: node " + std::string(kNode) +
                                             " is already enrolled", "control's hint"};
  const auto e = escrow_enroll_error(node_exists, kNode);
  CHECK(e.code == Errc::refused);
  CHECK(e.message.find("409 node_exists") != std::string::npos);
  CHECK(e.message.find("locked /persist volume") != std::string::npos);
  CHECK(e.hint.find("cairn-control node allow-reenroll " + std::string(kNode)) != std::string::npos);
  CHECK(e.hint.find("--expect-id " + std::string(kNode)) != std::string::npos);
  CHECK(e.hint.find("the volume was not touched") != std::string::npos);
  // Control away is not a refusal: passed on as it is (the stage retries it).
  const Error away{Errc::unavailable, "connect: Connection refused", ""};
  CHECK(escrow_enroll_error(away, kNode).message == away.message);
  CHECK(escrow_enroll_error(away, kNode).code == Errc::unavailable);
}
