// The real cairn-agent's persist commands on a fake host root (sysfs, a disk image, a partition
// image) with a real swtpm: everything up to activation, which needs device-mapper (the fake
// root has none, so the outcome is the same on any machine; activation is proved in the VM).
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>

#include "agent/persist/disk.hpp"
#include "agent/persist/luks.hpp"
#include "agent/persist/token.hpp"
#include "agent/persist/tpm.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "tests/integration/persist/swtpm.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

std::string agent_path() {
  const char* p = std::getenv("CAIRN_AGENT");
  return p ? p : "";
}

void make_file(const std::filesystem::path& p, std::uint64_t bytes) {
  std::filesystem::create_directories(p.parent_path());
  { std::ofstream(p, std::ios::binary); }
  std::filesystem::resize_file(p, bytes);
}

struct Node {
  test::TempDir dir;
  std::filesystem::path root() const { return dir.path() / "root"; }
  explicit Node(const std::string& tcti) {
    std::filesystem::create_directories(root() / "sys/block/vda");
    std::ofstream(root() / "sys/block/vda/size") << (128 * kMiB / 512) << "\n";
    make_file(root() / "dev/vda", 128 * kMiB);
    Json cfg{{"persist", {{"disk", "device:/dev/vda"}, {"min_size_mib", 64}, {"tcti", tcti}}}};
    REQUIRE(write_file_atomic(root() / "etc/cairn/agent.json", dump_json(cfg, 2)).has_value());
  }
  test::RunResult run(std::vector<std::string> args, std::vector<std::string> tail = {}) const {
    std::vector<std::string> argv{agent_path()};
    for (auto& a : args) argv.push_back(std::move(a));
    argv.push_back("--root");
    argv.push_back(root().string());
    argv.push_back("--json");
    for (auto& a : tail) argv.push_back(std::move(a));
    return test::run_capture(argv, dir.path(), std::chrono::seconds(60));
  }
};

Json parse(const test::RunResult& r) {
  auto j = parse_json(r.out, "cairn-agent output");
  REQUIRE_MESSAGE(j.has_value(), (r.out + r.err));
  return *j;
}

std::string digest(const std::filesystem::path& p) { return sha256_hex(read_file(p, 256 * kMiB).value_or("")); }

}  // namespace

TEST_CASE("cairn-agent volume-setup, persist status, add-recovery and reseal on a fake root with swtpm") {
  if (agent_path().empty()) CAIRN_SKIP("CAIRN_AGENT is not set (run through meson test)");
  test::TempDir tpm_dir;
  std::string why;
  auto sw = test::Swtpm::start(tpm_dir.path(), why);
  if (!sw) CAIRN_SKIP(why);
  if (!test::have_program("tpm2_pcrextend")) CAIRN_SKIP("tpm2-tools is not installed (tpm2_pcrextend)");
  Node node(sw->tcti());
  const auto disk = node.root() / "dev/vda";

  // An empty disk and no device-mapper: the first boot writes nothing and says why.
  const auto before = digest(disk);
  auto first = node.run({"volume-setup"});
  CHECK(first.exit_code == 69);
  auto j = parse(first);
  CHECK(j["error"]["message"].get<std::string>().find("device-mapper") != std::string::npos);
  CHECK(digest(disk) == before);

  auto wipe = node.run({"volume-setup", "--wipe"});
  CHECK(wipe.exit_code == 64);

  auto status = node.run({"persist", "status"});
  REQUIRE_MESSAGE(status.exit_code == 0, (status.out + status.err));
  j = parse(status);
  CHECK(j["details"]["device"]["exists"] == false);
  CHECK(j["details"]["device"]["disk"] == "/dev/vda");
  CHECK(j["details"]["tpm"]["available"] == true);
  CHECK(j["details"]["tpm"]["real"] == false);
  CHECK(j["details"]["device_mapper"] == false);
  CHECK(j["details"]["tpm"]["pcrs"]["7"].get<std::string>().size() == 64);

  // What a first boot on a machine with device-mapper leaves: the GPT partition (its device
  // is an image of its own here) formatted LUKS2 with the sealed key in a cairn-tpm2 token.
  const Root root(node.root());
  auto target = choose_target(root, DiskRule{DiskRule::Kind::device, "/dev/vda"}, 64 * kMiB);
  REQUIRE(target.has_value());
  REQUIRE(create_partition(root, *target).has_value());
  make_file(node.root() / "dev/vda1", 40 * kMiB);
  auto tpm = open_tpm(sw->tcti());
  REQUIRE(tpm.has_value());
  auto secret = random_secret();
  REQUIRE(secret.has_value());
  auto sealed = (*tpm)->seal(*secret, PcrPolicy{});
  REQUIRE(sealed.has_value());
  auto crypt = make_libcryptsetup();
  auto slot = crypt->format(node.root() / "dev/vda1", passphrase_of(*secret), "cairn-persist");
  REQUIRE(slot.has_value());
  REQUIRE(crypt->set_token(node.root() / "dev/vda1", encode_tpm_token(TpmToken{*slot, *sealed}), std::nullopt).has_value());

  // A later boot: unsealed and the key checked; activation is where this kernel stops.
  auto later = node.run({"volume-setup"});
  CHECK(later.exit_code == 69);
  CHECK(parse(later)["error"]["message"].get<std::string>().find("device-mapper") != std::string::npos);

  status = node.run({"persist", "status"});
  j = parse(status);
  CHECK(j["details"]["device"]["exists"] == true);
  CHECK(j["details"]["device"]["partition"] == "/dev/vda1");
  CHECK(j["details"]["luks"]["state"] == "luks2");
  CHECK(j["details"]["luks"]["tokens"][0]["type"] == "cairn-tpm2");
  CHECK(j["details"]["luks"]["tokens"][0]["pcrs"] == Json::array({7}));

  auto rec = node.run({"persist", "add-recovery"});
  REQUIRE_MESSAGE(rec.exit_code == 0, (rec.out + rec.err));
  const auto recovery = parse(rec)["details"]["recovery_key"].get<std::string>();
  CHECK(recovery.size() == 71);

  // PCR 7 changes: refused (77), a critical event kept for the service, nothing reformatted.
  REQUIRE(test::run_capture({"/usr/bin/tpm2_pcrextend", "7:sha256=" + std::string(64, 'c')}, tpm_dir.path(),
                            std::chrono::seconds(20), {"TPM2TOOLS_TCTI=" + sw->tcti()})
              .exit_code == 0);
  const auto luks_before = digest(node.root() / "dev/vda1");
  auto refused = node.run({"volume-setup"});
  CHECK(refused.exit_code == 77);
  j = parse(refused);
  CHECK(j["error"]["message"].get<std::string>().find("PCR 7") != std::string::npos);
  CHECK(j["error"]["hint"].get<std::string>().find("persist reseal") != std::string::npos);
  CHECK(digest(node.root() / "dev/vda1") == luks_before);
  auto event = read_file(node.root() / "run/cairn/persist-event.json", 65536);
  REQUIRE(event.has_value());
  CHECK(event->find("persist.unlock_failed") != std::string::npos);
  status = node.run({"persist", "status"});
  CHECK(parse(status)["details"]["unlock_failure"]["severity"] == "critical");

  // The operator reseals with the recovery key; the next boot unseals again.
  REQUIRE(write_file_atomic(node.dir.path() / "recovery.txt", recovery + "\n", 0600).has_value());
  auto resealed = node.run({"persist", "reseal"}, {"--recovery-key-file", (node.dir.path() / "recovery.txt").string()});
  REQUIRE_MESSAGE(resealed.exit_code == 0, (resealed.out + resealed.err));
  // The failure's event stays for the service to send (it starts once the volume is open).
  CHECK(std::filesystem::exists(node.root() / "run/cairn/persist-event.json"));
  auto after = node.run({"volume-setup"});
  CHECK(after.exit_code == 69);
}
