// The server's small parts that need no socket: the enrollment rate limit, the kernel-TLS
// probe and the TLS context's refusals of bad files.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>

#include "common/fs.hpp"
#include "control/server/rate_limit.hpp"
#include "control/server/tls_context.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::control::server {
namespace {

using namespace std::chrono_literals;
using TimePoint = TokenBucket::TimePoint;

TEST_CASE("the enrollment bucket lets a burst through, then the rate, and refills with time") {
  TokenBucket bucket(/*rate_per_second=*/2, /*burst=*/3);
  const TimePoint t0{std::chrono::seconds(1000)};
  CHECK(bucket.try_take(t0));
  CHECK(bucket.try_take(t0));
  CHECK(bucket.try_take(t0));
  CHECK_FALSE(bucket.try_take(t0));           // the burst is spent
  CHECK_FALSE(bucket.try_take(t0 + 400ms));   // 0.8 of a token back
  CHECK(bucket.try_take(t0 + 500ms + 100ms)); // 1.2 tokens back: one taken
  CHECK_FALSE(bucket.try_take(t0 + 700ms));
  CHECK(bucket.try_take(t0 + 100s));          // refilled, but never above the burst
  CHECK(bucket.try_take(t0 + 100s));
  CHECK(bucket.try_take(t0 + 100s));
  CHECK_FALSE(bucket.try_take(t0 + 100s));
  CHECK(bucket.retry_after_seconds() == 1);
  CHECK(TokenBucket(0.1, 1).retry_after_seconds() == 10);
}

TEST_CASE("a rate of 0 means no limit") {
  TokenBucket bucket(0, 1);
  const TimePoint t0{std::chrono::seconds(1)};
  for (int i = 0; i < 10'000; ++i) REQUIRE(bucket.try_take(t0));
  CHECK(bucket.retry_after_seconds() == 0);
}

TEST_CASE("kernel TLS is used only when the kernel lists the tls ULP") {
  test::TempDir dir;
  const Root root(dir.path());
  CHECK_FALSE(kernel_offers_tls_ulp(root));  // no /proc entry at all
  std::filesystem::create_directories(root / "proc/sys/net/ipv4");
  REQUIRE(write_file_atomic(root / "proc/sys/net/ipv4/tcp_available_ulp", "mptcp\n"));
  CHECK_FALSE(kernel_offers_tls_ulp(root));
  REQUIRE(write_file_atomic(root / "proc/sys/net/ipv4/tcp_available_ulp", "espintcp mptcp tls\n"));
  CHECK(kernel_offers_tls_ulp(root));
}

TEST_CASE("a TLS context names the file that is missing and what to do") {
  test::TempDir dir;
  TlsSettings settings{.cert_file = dir.path() / "server.crt",
                       .key_file = dir.path() / "server.key",
                       .ca_file = dir.path() / "ca.crt"};
  auto ctx = make_server_tls_context(settings);
  REQUIRE_FALSE(ctx.has_value());
  CHECK(ctx.error().code == Errc::config);
  CHECK(ctx.error().message.find((dir.path() / "server.crt").string()) != std::string::npos);
  CHECK(ctx.error().hint.find("cairn-control init") != std::string::npos);
}

}  // namespace
}  // namespace cairn::control::server
