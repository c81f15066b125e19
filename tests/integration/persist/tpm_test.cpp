// The TPM backend against a real swtpm through tpm2-tss's swtpm TCTI: sealing, unsealing,
// the PCR policy and a blob from another TPM.
#include <doctest/doctest.h>

#include "agent/persist/tpm.hpp"
#include "tests/integration/persist/swtpm.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::persist;
using cairn::test::Swtpm;

namespace {

// PCR extend through tpm2-tools (checks only; Cairn itself never extends a PCR).
bool extend_pcr(const Swtpm& tpm, int pcr, const std::filesystem::path& scratch) {
  auto r = test::run_capture({"/usr/bin/tpm2_pcrextend",
                              std::to_string(pcr) + ":sha256=" + std::string(64, 'a')},
                             scratch, std::chrono::seconds(20), {"TPM2TOOLS_TCTI=" + tpm.tcti()});
  return r.exit_code == 0;
}

Secret key_of(char c) { return Secret(std::string(32, c)); }

}  // namespace

TEST_CASE("a key sealed to PCR 7 unseals on the same TPM with the same PCRs") {
  test::TempDir dir;
  std::string why;
  auto sw = Swtpm::start(dir.path(), why);
  if (!sw) CAIRN_SKIP(why);
  auto tpm = open_tpm(sw->tcti());
  REQUIRE_MESSAGE(tpm.has_value(), tpm.error().message);
  CHECK_FALSE((*tpm)->is_real());

  auto secret = random_secret();
  REQUIRE(secret.has_value());
  auto sealed = (*tpm)->seal(*secret, PcrPolicy{});
  REQUIRE_MESSAGE(sealed.has_value(), sealed.error().message);
  CHECK(sealed->policy.pcrs == std::vector<int>{7});
  CHECK(sealed->blob.find(std::string(secret->view())) == std::string::npos);  // not in clear

  auto opened = (*tpm)->unseal(*sealed);
  REQUIRE_MESSAGE(opened.has_value(), opened.error().message);
  CHECK(*opened == *secret);

  // A second TPM object (a later boot) opens it too: the primary key is derived again.
  auto again = open_tpm(sw->tcti());
  REQUIRE(again.has_value());
  auto reopened = (*again)->unseal(*sealed);
  REQUIRE_MESSAGE(reopened.has_value(), reopened.error().message);
  CHECK(*reopened == *secret);
}

TEST_CASE("unsealing fails after a PCR extend, with an error naming the PCRs and their values") {
  test::TempDir dir;
  std::string why;
  auto sw = Swtpm::start(dir.path(), why);
  if (!sw) CAIRN_SKIP(why);
  if (!test::have_program("tpm2_pcrextend")) CAIRN_SKIP("tpm2-tools is not installed (tpm2_pcrextend)");
  auto tpm = open_tpm(sw->tcti());
  REQUIRE(tpm.has_value());
  PcrPolicy policy;
  policy.pcrs = {0, 7};
  auto sealed = (*tpm)->seal(key_of('k'), policy);
  REQUIRE_MESSAGE(sealed.has_value(), sealed.error().message);
  auto before = (*tpm)->read_pcrs(policy);
  REQUIRE(before.has_value());

  REQUIRE(extend_pcr(*sw, 7, dir.path()));
  auto after = (*tpm)->read_pcrs(policy);
  REQUIRE(after.has_value());
  CHECK((*after)[1].sha256_hex != (*before)[1].sha256_hex);

  auto opened = (*tpm)->unseal(*sealed);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::refused);
  CHECK(opened.error().message.find("PCR 0+7 (sha256)") != std::string::npos);
  CHECK(opened.error().message.find("7=" + (*after)[1].sha256_hex) != std::string::npos);
  CHECK(opened.error().hint.find("persist reseal") != std::string::npos);
}

TEST_CASE("a PCR outside the policy may change: the key still unseals") {
  test::TempDir dir;
  std::string why;
  auto sw = Swtpm::start(dir.path(), why);
  if (!sw) CAIRN_SKIP(why);
  if (!test::have_program("tpm2_pcrextend")) CAIRN_SKIP("tpm2-tools is not installed (tpm2_pcrextend)");
  auto tpm = open_tpm(sw->tcti());
  REQUIRE(tpm.has_value());
  auto sealed = (*tpm)->seal(key_of('z'), PcrPolicy{});
  REQUIRE(sealed.has_value());
  REQUIRE(extend_pcr(*sw, 8, dir.path()));
  auto opened = (*tpm)->unseal(*sealed);
  REQUIRE_MESSAGE(opened.has_value(), opened.error().message);
  CHECK(*opened == key_of('z'));
}

TEST_CASE("a blob sealed by another TPM is refused clearly") {
  test::TempDir dir_a;
  test::TempDir dir_b;
  std::string why;
  auto a = Swtpm::start(dir_a.path(), why);
  if (!a) CAIRN_SKIP(why);
  auto b = Swtpm::start(dir_b.path(), why);
  if (!b) CAIRN_SKIP(why);
  auto tpm_a = open_tpm(a->tcti());
  auto tpm_b = open_tpm(b->tcti());
  REQUIRE(tpm_a.has_value());
  REQUIRE(tpm_b.has_value());
  auto sealed = (*tpm_a)->seal(key_of('x'), PcrPolicy{});
  REQUIRE(sealed.has_value());
  auto opened = (*tpm_b)->unseal(*sealed);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::refused);
  CHECK(opened.error().message.find("sealed by another TPM") != std::string::npos);
}

TEST_CASE("a damaged blob is bad data, not a TPM failure") {
  test::TempDir dir;
  std::string why;
  auto sw = Swtpm::start(dir.path(), why);
  if (!sw) CAIRN_SKIP(why);
  auto tpm = open_tpm(sw->tcti());
  REQUIRE(tpm.has_value());
  auto sealed = (*tpm)->seal(key_of('d'), PcrPolicy{});
  REQUIRE(sealed.has_value());
  SealedKey cut = *sealed;
  cut.blob.resize(cut.blob.size() / 2);
  auto opened = (*tpm)->unseal(cut);
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == Errc::data);

  SealedKey flipped = *sealed;
  flipped.blob[flipped.blob.size() - 5] ^= 0x55;  // inside the private area: integrity fails
  auto refused = (*tpm)->unseal(flipped);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
}

TEST_CASE("no TPM behind the TCTI is a clear error at open") {
  auto tpm = open_tpm("swtpm:host=127.0.0.1,port=1");
  REQUIRE_FALSE(tpm.has_value());
  CHECK(tpm.error().code == Errc::unavailable);
  CHECK(tpm.error().message.find("port=1") != std::string::npos);
}
