// The volume flow with the real TPM (swtpm) and real LUKS2 (libcryptsetup on an image file):
// only what needs device-mapper (activation, mkfs, mount) is replaced, by a key check.
#include <doctest/doctest.h>

#include <fstream>

#include "agent/persist/token.hpp"
#include "agent/persist/volume.hpp"
#include "tests/integration/persist/swtpm.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/persist_fakes.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

namespace {

// libcryptsetup for everything but activation, which only checks the key (no device-mapper here).
class NoDmCrypt final : public BlockCrypt {
 public:
  explicit NoDmCrypt(std::filesystem::path image) : real_(make_libcryptsetup()), image_(std::move(image)) {}
  Result<LuksHeader> inspect(const std::filesystem::path&) override { return real_->inspect(image_); }
  Result<int> format(const std::filesystem::path&, const Secret& p, const std::string& label) override {
    return real_->format(image_, p, label);
  }
  Result<int> add_keyslot(const std::filesystem::path&, const Secret& e, const Secret& n) override {
    return real_->add_keyslot(image_, e, n);
  }
  Status remove_keyslot(const std::filesystem::path&, int k) override { return real_->remove_keyslot(image_, k); }
  Result<int> set_token(const std::filesystem::path&, const std::string& j, std::optional<int> r) override {
    return real_->set_token(image_, j, r);
  }
  Result<int> check_passphrase(const std::filesystem::path&, const Secret& p) override {
    return real_->check_passphrase(image_, p);
  }
  Status activate(const std::filesystem::path&, const std::string&, const Secret& p) override {
    auto slot = real_->check_passphrase(image_, p);
    if (!slot) return fail(slot.error());
    ++activations;
    return {};
  }
  Status deactivate(const std::string&) override { return {}; }
  // Activation is only a key check here: no mapping is ever left open.
  Result<std::optional<ActiveMapping>> active_mapping(const std::string&) override {
    return std::optional<ActiveMapping>{};
  }
  int activations = 0;

 private:
  std::unique_ptr<BlockCrypt> real_;
  std::filesystem::path image_;
};

bool extend_pcr7(const test::Swtpm& tpm, const std::filesystem::path& scratch) {
  return test::run_capture({"/usr/bin/tpm2_pcrextend", "7:sha256=" + std::string(64, 'b')}, scratch,
                           std::chrono::seconds(20), {"TPM2TOOLS_TCTI=" + tpm.tcti()})
             .exit_code == 0;
}

}  // namespace

TEST_CASE("swtpm + LUKS2 image: first boot, later boot, PCR change refused without reformat, reseal with the recovery key") {
  test::TempDir dir;
  std::string why;
  auto sw = test::Swtpm::start(dir.path() / "tpm", why);
  if (!sw) CAIRN_SKIP(why);
  if (!test::have_program("tpm2_pcrextend")) CAIRN_SKIP("tpm2-tools is not installed (tpm2_pcrextend)");
  auto tpm = open_tpm(sw->tcti());
  REQUIRE(tpm.has_value());
  const auto img = dir.path() / "vda1.img";
  { std::ofstream(img, std::ios::binary); }
  std::filesystem::resize_file(img, 40 * 1024 * 1024);

  NoDmCrypt crypt(img);
  test::FakeHost host;
  std::vector<protocol::Event> events;
  VolumeConfig config;
  config.mount_point = "/persist";
  VolumeDeps deps;
  deps.tpm = tpm->get();
  deps.crypt = &crypt;
  deps.host = &host;
  deps.critical = [&](const protocol::Event& e) { events.push_back(e); };

  auto first = open_volume(config, deps);
  REQUIRE_MESSAGE(first.has_value(), first.error().message);
  CHECK(first->action == VolumeOutcome::Action::formatted);
  auto header = crypt.inspect(img);
  REQUIRE(header.has_value());
  REQUIRE(find_token(*header, kTpmTokenType).has_value());
  CHECK(crypt.activations == 1);

  auto later = open_volume(config, deps);
  REQUIRE_MESSAGE(later.has_value(), later.error().message);
  CHECK(later->action == VolumeOutcome::Action::opened);
  CHECK(crypt.activations == 2);

  auto recovery = add_recovery(config, deps);
  REQUIRE_MESSAGE(recovery.has_value(), recovery.error().message);

  REQUIRE(extend_pcr7(*sw, dir.path()));
  const auto uuid_before = crypt.inspect(img)->uuid;
  auto refused = open_volume(config, deps);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
  CHECK(refused.error().message.find("PCR 7") != std::string::npos);
  REQUIRE(events.size() == 1);
  auto pcrs = (*tpm)->read_pcrs(PcrPolicy{});
  REQUIRE(pcrs.has_value());
  CHECK(events[0].message.find("7=" + (*pcrs)[0].sha256_hex) != std::string::npos);
  CHECK(crypt.inspect(img)->uuid == uuid_before);  // the same LUKS volume: not reformatted
  CHECK(host.mkfs.size() == 1);

  auto slot = reseal(config, deps, recovery_passphrase(recovery->display));
  REQUIRE_MESSAGE(slot.has_value(), slot.error().message);
  auto reopened = open_volume(config, deps);
  REQUIRE_MESSAGE(reopened.has_value(), reopened.error().message);
  CHECK(reopened->keyslot == *slot);
  CHECK(crypt.inspect(img)->uuid == uuid_before);
}
