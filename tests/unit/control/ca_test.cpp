#include <doctest/doctest.h>

#include <chrono>

#include "common/crypto.hpp"
#include "control/ca.hpp"
#include "tests/support/manual_clock.hpp"

using namespace cairn;
using namespace cairn::test;
using namespace std::chrono_literals;

TEST_CASE("a node certificate takes only the key from the CSR") {
  ManualClock clock;
  auto ca = control::CertificateAuthority::create("Test CA", 24h * 365, clock);
  REQUIRE(ca);
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key);
  const std::string node_id = "4c4c4544-0042-3510-8053-b7c04f4e4b32";
  auto csr_pem = make_csr_pem(key->get(), node_id);
  REQUIRE(csr_pem);
  auto csr = control::check_node_csr(*csr_pem, node_id);
  REQUIRE(csr);
  auto cert = ca->issue_node_cert(csr->get(), node_id, 90 * 24h, clock);
  REQUIRE(cert);
  const auto info = cert_info(cert->get());
  CHECK(info.subject_cn == node_id);
  CHECK(info.issuer_cn == "Test CA");
  CHECK(info.not_before == std::chrono::time_point_cast<std::chrono::seconds>(clock.now()) - control::kBackdate);
  CHECK(info.not_after == std::chrono::time_point_cast<std::chrono::seconds>(clock.now()) + 90 * 24h);
  CHECK(EVP_PKEY_eq(X509_get0_pubkey(cert->get()), key->get()) == 1);
  CHECK((X509_get_extended_key_usage(cert->get()) & XKU_SSL_CLIENT) != 0);
  CHECK(X509_check_ca(cert->get()) == 0);
  CHECK(verify_cert_chain(cert->get(), ca->cert_pem(), clock.now()));
  CHECK(!verify_cert_chain(cert->get(), ca->cert_pem(), clock.now() + 91 * 24h));
}

TEST_CASE("admin certificates carry the admin prefix, node certificates never do") {
  ManualClock clock;
  auto ca = control::CertificateAuthority::create("Test CA", 24h, clock);
  REQUIRE(ca);
  auto key = generate_key(KeyType::p256);
  REQUIRE(key);
  auto admin = ca->issue_admin_cert(key->get(), "bob", 1h, clock);
  REQUIRE(admin);
  CHECK(cert_info(admin->get()).subject_cn == "admin:bob");
  auto csr = make_csr_pem(key->get(), "admin:bob");
  REQUIRE(csr);
  auto checked = control::check_node_csr(*csr, "admin:bob");
  REQUIRE(!checked);
  CHECK(checked.error().body.code == "csr_mismatch");
}
