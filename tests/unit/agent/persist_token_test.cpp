// The LUKS2 tokens Cairn writes: round trips, and damaged tokens named field by field.
#include <doctest/doctest.h>

#include "agent/persist/token.hpp"

using namespace cairn;
using namespace cairn::agent::persist;

TEST_CASE("base64 round trips every length and refuses what is not base64") {
  for (std::size_t n = 0; n < 70; ++n) {
    std::string bytes;
    for (std::size_t i = 0; i < n; ++i) bytes += static_cast<char>((i * 37 + n) & 0xff);
    auto back = base64_decode(base64_encode(bytes));
    REQUIRE(back.has_value());
    CHECK(*back == bytes);
  }
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK_FALSE(base64_decode("Zm9").has_value());
  CHECK_FALSE(base64_decode("Zm9v!mFy").has_value());
  CHECK_FALSE(base64_decode("Zm=vYmFy").has_value());
}

TEST_CASE("a cairn-tpm2 token round trips") {
  TpmToken t{3, SealedKey{std::string("\x00\x01\x02sealed", 9), PcrPolicy{{0, 2, 7}, "sha256"}}};
  const auto json = encode_tpm_token(t);
  auto back = decode_tpm_token(LuksToken{0, "cairn-tpm2", json});
  REQUIRE(back.has_value());
  CHECK(back->keyslot == 3);
  CHECK(back->sealed.blob == t.sealed.blob);
  CHECK(back->sealed.policy.pcrs == std::vector<int>{0, 2, 7});
  CHECK(json.find("\"keyslots\":[\"3\"]") != std::string::npos);
}

TEST_CASE("damaged cairn-tpm2 tokens are bad data naming what is wrong") {
  struct Case {
    const char* json;
    const char* names;
  };
  const Case cases[] = {
      {"not json", "LUKS2 token 5"},
      {R"([1,2])", "not a JSON object"},
      {R"({"type":"other","keyslots":["0"]})", "type is not cairn-tpm2"},
      {R"({"type":"cairn-tpm2","keyslots":[0],"cairn-tpm2-blob":"AAAA","cairn-tpm2-pcrs":[7],"cairn-tpm2-pcr-bank":"sha256"})", "keyslots"},
      {R"({"type":"cairn-tpm2","keyslots":["x"],"cairn-tpm2-blob":"AAAA","cairn-tpm2-pcrs":[7],"cairn-tpm2-pcr-bank":"sha256"})", "keyslot 'x'"},
      {R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-pcrs":[7],"cairn-tpm2-pcr-bank":"sha256"})", "cairn-tpm2-blob"},
      {R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-blob":"A*AA","cairn-tpm2-pcrs":[7],"cairn-tpm2-pcr-bank":"sha256"})", "cairn-tpm2-blob"},
      {R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-blob":"AAAA","cairn-tpm2-pcrs":[],"cairn-tpm2-pcr-bank":"sha256"})", "cairn-tpm2-pcrs"},
      {R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-blob":"AAAA","cairn-tpm2-pcrs":[24],"cairn-tpm2-pcr-bank":"sha256"})", "24"},
      {R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-blob":"AAAA","cairn-tpm2-pcrs":[7]})", "cairn-tpm2-pcr-bank"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.json);
    auto r = decode_tpm_token(LuksToken{5, "cairn-tpm2", c.json});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::data);
    CHECK(r.error().message.find(c.names) != std::string::npos);
    CHECK(r.error().hint.find("recovery key") != std::string::npos);
  }
}

TEST_CASE("escrow and recovery tokens round trip") {
  auto e = decode_escrow_token(LuksToken{1, "cairn-escrow", encode_escrow_token(EscrowToken{0, "node-9"})});
  REQUIRE(e.has_value());
  CHECK(e->node_id == "node-9");
  CHECK(decode_recovery_token(LuksToken{2, "cairn-recovery", encode_recovery_token(4)}).value_or(-1) == 4);
  CHECK_FALSE(decode_recovery_token(LuksToken{2, "cairn-recovery", encode_escrow_token(EscrowToken{0, "n"})}).has_value());
}
