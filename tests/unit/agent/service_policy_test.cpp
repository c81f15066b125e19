#include <doctest/doctest.h>

#include "agent/runtime/service.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

TEST_CASE("backoff doubles from the minimum up to the maximum, with equal jitter") {
  ServiceOptions o;
  o.min_backoff = milliseconds(1000);
  o.max_backoff = milliseconds(60000);
  CHECK(backoff_delay(o, 1, 1.0) == milliseconds(1000));
  CHECK(backoff_delay(o, 2, 1.0) == milliseconds(2000));
  CHECK(backoff_delay(o, 5, 1.0) == milliseconds(16000));
  CHECK(backoff_delay(o, 7, 1.0) == milliseconds(60000));
  CHECK(backoff_delay(o, 1000, 1.0) == milliseconds(60000));
  // jitter keeps at least half of the delay, so a fleet spreads but never hammers
  CHECK(backoff_delay(o, 3, 0.0) == milliseconds(2000));
  CHECK(backoff_delay(o, 3, 0.5) == milliseconds(3000));
}

TEST_CASE("rotation is due at 75% of the lifetime, spread by the jitter") {
  ServiceOptions o;
  const auto nb = system_clock::time_point(hours(1000));
  const auto na = nb + hours(24 * 100);  // 100 days
  CHECK(rotation_time(o, nb, na, 0.5) == nb + hours(24 * 75));
  CHECK(rotation_time(o, nb, na, 0.0) == nb + hours(24 * 70));
  CHECK(rotation_time(o, nb, na, 1.0) == nb + hours(24 * 80));
  // a certificate of seconds rotates within its lifetime too
  CHECK(rotation_time(o, nb, nb + seconds(8), 0.5) == nb + milliseconds(6000));
}
