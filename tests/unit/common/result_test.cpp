#include <doctest/doctest.h>

#include "common/result.hpp"

using namespace cairn;

TEST_CASE("an error keeps its code and hint when context is added") {
  const Error e{Errc::refused, "token expired", "create a new token"};
  const Error c = e.with_context("enroll");
  CHECK(c.code == Errc::refused);
  CHECK(c.message == "enroll: token expired");
  CHECK(c.hint == "create a new token");
}

TEST_CASE("error codes are the sysexits values scripts branch on") {
  CHECK(static_cast<int>(Errc::usage) == 64);
  CHECK(static_cast<int>(Errc::unavailable) == 69);
  CHECK(static_cast<int>(Errc::refused) == 77);
  CHECK(static_cast<int>(Errc::config) == 78);
  CHECK(errc_name(Errc::temporary) == "temporary");
}
