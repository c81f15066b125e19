// LUKS2 through the real libcryptsetup on file-backed images: format, tokens, keyslots and key
// checks need no device-mapper (activation does: it is proved in the VM of the boot issue).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include "agent/persist/luks.hpp"
#include "agent/persist/token.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

namespace {

std::filesystem::path image(const test::TempDir& dir, const char* name, std::uintmax_t mib = 40) {
  const auto path = dir.path() / name;
  { std::ofstream(path, std::ios::binary); }
  std::filesystem::resize_file(path, mib * 1024 * 1024);
  return path;
}

void write_at(const std::filesystem::path& path, off_t offset, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), offset) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

SealedKey sample_sealed() { return SealedKey{std::string("\x00\x4e\x00\x08sealed\xff", 11), PcrPolicy{{0, 7}, "sha256"}}; }

}  // namespace

TEST_CASE("an image without LUKS is 'none'") {
  test::TempDir dir;
  auto crypt = make_libcryptsetup();
  auto h = crypt->inspect(image(dir, "blank.img"));
  REQUIRE(h.has_value());
  CHECK(h->state == LuksHeader::State::none);
}

TEST_CASE("format, cairn-tpm2 token write and read back, key check") {
  test::TempDir dir;
  const auto img = image(dir, "vol.img");
  auto crypt = make_libcryptsetup();
  const Secret key(std::string(32, '\x42'));
  auto slot = crypt->format(img, passphrase_of(key), "cairn-persist");
  REQUIRE_MESSAGE(slot.has_value(), slot.error().message);
  auto id = crypt->set_token(img, encode_tpm_token(TpmToken{*slot, sample_sealed()}), std::nullopt);
  REQUIRE_MESSAGE(id.has_value(), id.error().message);

  auto h = crypt->inspect(img);
  REQUIRE(h.has_value());
  CHECK(h->state == LuksHeader::State::luks2);
  CHECK(h->label == "cairn-persist");
  CHECK_FALSE(h->uuid.empty());
  CHECK(h->active_keyslots == std::vector<int>{*slot});
  auto token = find_token(*h, kTpmTokenType);
  REQUIRE(token.has_value());
  auto decoded = decode_tpm_token(*token);
  REQUIRE_MESSAGE(decoded.has_value(), decoded.error().message);
  CHECK(decoded->keyslot == *slot);
  CHECK(decoded->sealed.blob == sample_sealed().blob);
  CHECK(decoded->sealed.policy.pcrs == std::vector<int>{0, 7});

  auto ok = crypt->check_passphrase(img, passphrase_of(key));
  REQUIRE_MESSAGE(ok.has_value(), ok.error().message);
  CHECK(*ok == *slot);
  auto wrong = crypt->check_passphrase(img, passphrase_of(Secret(std::string(32, '\x43'))));
  REQUIRE_FALSE(wrong.has_value());
  CHECK(wrong.error().code == Errc::refused);
}

TEST_CASE("a recovery keyslot opens the volume; replacing a token keeps its id; a removed keyslot no longer opens") {
  test::TempDir dir;
  const auto img = image(dir, "vol.img");
  auto crypt = make_libcryptsetup();
  const Secret tpm_key = passphrase_of(Secret(std::string(32, 't')));
  const Secret recovery("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  REQUIRE(crypt->format(img, tpm_key, "cairn-persist").has_value());
  auto id = crypt->set_token(img, encode_tpm_token(TpmToken{0, sample_sealed()}), std::nullopt);
  REQUIRE(id.has_value());

  auto bad = crypt->add_keyslot(img, Secret("not the key"), recovery);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == Errc::refused);

  auto rslot = crypt->add_keyslot(img, tpm_key, recovery);
  REQUIRE_MESSAGE(rslot.has_value(), rslot.error().message);
  CHECK(*rslot == 1);
  REQUIRE(crypt->set_token(img, encode_recovery_token(*rslot), std::nullopt).has_value());
  CHECK(crypt->check_passphrase(img, recovery).value_or(-1) == 1);

  SealedKey resealed = sample_sealed();
  resealed.blob = "another blob";
  auto replaced = crypt->set_token(img, encode_tpm_token(TpmToken{1, resealed}), *id);
  REQUIRE(replaced.has_value());
  CHECK(*replaced == *id);
  REQUIRE(crypt->remove_keyslot(img, 0).has_value());
  CHECK_FALSE(crypt->check_passphrase(img, tpm_key).has_value());

  auto h = crypt->inspect(img);
  REQUIRE(h.has_value());
  CHECK(h->tokens.size() == 2);
  CHECK(decode_tpm_token(*find_token(*h, kTpmTokenType))->sealed.blob == "another blob");
  CHECK(decode_recovery_token(*find_token(*h, kRecoveryTokenType)).value_or(-1) == 1);
}

TEST_CASE("a header damaged in both copies is 'unreadable', not 'none'") {
  test::TempDir dir;
  const auto img = image(dir, "vol.img");
  auto crypt = make_libcryptsetup();
  REQUIRE(crypt->format(img, Secret("k"), "cairn-persist").has_value());
  // Keep both magics, damage the binary headers' checksummed fields and the JSON areas.
  write_at(img, 64, std::string(4000, 'x'));
  write_at(img, 4096, std::string(8000, 'x'));
  write_at(img, 16384 + 64, std::string(4000, 'x'));
  write_at(img, 16384 + 4096, std::string(8000, 'x'));
  auto h = crypt->inspect(img);
  REQUIRE(h.has_value());
  CHECK(h->state == LuksHeader::State::unreadable);
  auto check = crypt->check_passphrase(img, Secret("k"));
  REQUIRE_FALSE(check.has_value());
  CHECK(check.error().code == Errc::data);
}

TEST_CASE("a missing device is an I/O error naming it") {
  auto crypt = make_libcryptsetup();
  auto h = crypt->inspect("/nonexistent/cairn-test.img");
  REQUIRE_FALSE(h.has_value());
  CHECK(h.error().message.find("/nonexistent/cairn-test.img") != std::string::npos);
}
