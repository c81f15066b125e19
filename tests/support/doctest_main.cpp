// The main of every test binary: doctest plus honest skips. A test that cannot run here
// calls CAIRN_SKIP("reason"); it is reported as skipped, not passed, and ./tools/test reads
// the closing "cairn-tests: passed=N failed=N skipped=N" line of each binary.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <mutex>
#include <set>
#include <string>

#include "tests/support/skip.hpp"

namespace cairn::test {
namespace {

std::mutex g_mutex;
std::set<std::string> g_skipped;

struct Counts {
  int run = 0;
  int failed = 0;
} g_counts;

// A listener sees every test case end and counts results per test case (not per subcase).
struct CountingListener : doctest::IReporter {
  explicit CountingListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    g_counts.run = static_cast<int>(stats.numTestCasesPassingFilters);
    g_counts.failed = static_cast<int>(stats.numTestCasesFailed);
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

void record_skip(const std::string& reason) {
  const auto* current = doctest::detail::g_cs ? doctest::detail::g_cs->currentTest : nullptr;
  const char* test_name = current ? current->m_name : "?";
  std::lock_guard lock(g_mutex);
  g_skipped.insert(test_name);
  std::fprintf(stderr, "SKIPPED: %s: %s\n", test_name, reason.c_str());
}

}  // namespace cairn::test

DOCTEST_REGISTER_LISTENER("cairn-counting", 1, cairn::test::CountingListener);

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (context.shouldExit()) return rc;
  const int skipped = static_cast<int>(cairn::test::g_skipped.size());
  const int failed = cairn::test::g_counts.failed;
  const int passed = cairn::test::g_counts.run - failed - skipped;
  std::printf("cairn-tests: passed=%d failed=%d skipped=%d\n", passed, failed, skipped);
  std::fflush(stdout);
  if (failed > 0) return 1;
  // meson's skip code only when everything in the binary was skipped
  if (skipped > 0 && passed == 0) return 77;
  return 0;
}
