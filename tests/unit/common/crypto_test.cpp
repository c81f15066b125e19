#include <doctest/doctest.h>

#include <chrono>

#include "common/crypto.hpp"

using namespace cairn;
using namespace std::chrono_literals;

TEST_CASE("a CSR made with an Ed25519 key names the node and round-trips through PEM") {
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key);
  CHECK(key_type_name(key->get()) == "ED25519");
  auto csr = make_csr_pem(key->get(), "4c4c4544-0042-3510-8053-b7c04f4e4b32");
  REQUIRE(csr);
  auto req = parse_csr_pem(*csr);
  REQUIRE(req);
  CHECK(subject_cn(X509_REQ_get_subject_name(req->get())) == "4c4c4544-0042-3510-8053-b7c04f4e4b32");
  auto pem = private_key_pem(key->get());
  REQUIRE(pem);
  CHECK(parse_private_key_pem(*pem));
}

TEST_CASE("a certificate issued by a CA verifies against it and not against another CA") {
  const auto now = std::chrono::system_clock::now();
  auto ca_key = generate_key(KeyType::p256);
  auto other_key = generate_key(KeyType::p256);
  auto leaf_key = generate_key(KeyType::ed25519);
  REQUIRE((ca_key && other_key && leaf_key));
  auto ca = issue_certificate({.common_name = "Cairn CA", .not_before = now - 1h, .not_after = now + 24h, .is_ca = true},
                              ca_key->get(), nullptr, ca_key->get());
  auto other = issue_certificate({.common_name = "Other CA", .not_before = now - 1h, .not_after = now + 24h, .is_ca = true},
                                 other_key->get(), nullptr, other_key->get());
  REQUIRE((ca && other));
  auto leaf = issue_certificate({.common_name = "node-1", .not_before = now - 1h, .not_after = now + 1h, .client_auth = true},
                                leaf_key->get(), ca->get(), ca_key->get());
  REQUIRE(leaf);
  const auto info = cert_info(leaf->get());
  CHECK(info.subject_cn == "node-1");
  CHECK(info.issuer_cn == "Cairn CA");
  CHECK(info.fingerprint_sha256.size() == 64);
  CHECK(verify_cert_chain(leaf->get(), *cert_pem(ca->get()), now));
  auto wrong = verify_cert_chain(leaf->get(), *cert_pem(other->get()), now);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().code == Errc::refused);
  CHECK_FALSE(verify_cert_chain(leaf->get(), *cert_pem(ca->get()), now + 2h));  // expired
}

TEST_CASE("sha256 and constant-time comparison") {
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(random_hex(32).size() == 64);
  CHECK(equal_constant_time("abc", "abc"));
  CHECK_FALSE(equal_constant_time("abc", "abd"));
  CHECK_FALSE(equal_constant_time("abc", "abcd"));
}

TEST_CASE("a common name over 64 bytes is refused with a clear error, never written empty") {
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key);
  const std::string longest(kMaxCommonNameBytes, 'a');
  const std::string too_long(kMaxCommonNameBytes + 1, 'a');

  auto ok = make_csr_pem(key->get(), longest);
  REQUIRE(ok);
  auto req = parse_csr_pem(*ok);
  REQUIRE(req);
  CHECK(subject_cn(X509_REQ_get_subject_name(req->get())) == longest);

  auto csr = make_csr_pem(key->get(), too_long);
  REQUIRE_FALSE(csr);
  CHECK(csr.error().code == Errc::data);
  CHECK(csr.error().message.find("65 bytes") != std::string::npos);
  CHECK(csr.error().message.find("at most 64") != std::string::npos);
  CHECK_FALSE(make_csr_pem(key->get(), ""));

  const auto now = std::chrono::system_clock::now();
  auto cert = issue_certificate({.common_name = too_long, .not_before = now, .not_after = now + 1h},
                                key->get(), nullptr, key->get());
  REQUIRE_FALSE(cert);
  CHECK(cert.error().code == Errc::data);
  CHECK(cert.error().message.find("65 bytes") != std::string::npos);
}

TEST_CASE("sign_hex and verify_signature_hex: Ed25519 and P-256, any change refused") {
  for (auto type : {KeyType::ed25519, KeyType::p256}) {
    CAPTURE(static_cast<int>(type));
    auto key = generate_key(type);
    auto other = generate_key(type);
    REQUIRE((key && other));
    auto sig = sign_hex(key->get(), "message");
    REQUIRE(sig);
    CHECK(verify_signature_hex(key->get(), "message", *sig));
    // verified with the public half alone, as control does
    auto pub = parse_public_key_pem(*public_key_pem(key->get()));
    REQUIRE(pub);
    CHECK(verify_signature_hex(pub->get(), "message", *sig));
    CHECK(verify_signature_hex(key->get(), "messagE", *sig).error().code == Errc::refused);
    CHECK(verify_signature_hex(other->get(), "message", *sig).error().code == Errc::refused);
    std::string flipped = *sig;
    flipped[10] = flipped[10] == '0' ? '1' : '0';
    CHECK_FALSE(verify_signature_hex(key->get(), "message", flipped));
    CHECK(verify_signature_hex(key->get(), "message", "xyz").error().code == Errc::refused);
  }
  CHECK_FALSE(parse_public_key_pem("not a key"));
}

TEST_CASE("hex_decode reverses hex_encode and refuses what is not hex") {
  const unsigned char bytes[] = {0x00, 0x7f, 0x80, 0xff};
  const auto hex = hex_encode(bytes, sizeof bytes);
  CHECK(hex == "007f80ff");
  auto back = hex_decode(hex);
  REQUIRE(back);
  CHECK(*back == std::string("\x00\x7f\x80\xff", 4));
  CHECK(hex_decode("007F80FF").value() == *back);
  CHECK(hex_decode("").value().empty());
  CHECK(hex_decode("abc").error().code == Errc::data);
  CHECK(hex_decode("zz").error().code == Errc::data);
}
