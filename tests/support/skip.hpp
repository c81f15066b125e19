// CAIRN_SKIP("reason"): ends the current test case and counts it as skipped (STYLE.md 13).
#pragma once

#include <doctest/doctest.h>

#include <string>

namespace cairn::test {
void record_skip(const std::string& reason);  // names the running test case itself
}

#define CAIRN_SKIP(reason)                 \
  do {                                     \
    ::cairn::test::record_skip((reason));  \
    return;                                \
  } while (0)
