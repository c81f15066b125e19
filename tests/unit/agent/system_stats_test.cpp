#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "agent/runtime/system_stats.hpp"
#include "agent/transport/control_client.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

TEST_CASE("heartbeat stats are read from the /proc of the root") {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "proc/sys/kernel/random");
  std::ofstream(dir.path() / "proc/sys/kernel/random/boot_id") << "0f6d2c5e-7a3b-4f0e-9b1d-2a3c4d5e6f70\n";
  std::ofstream(dir.path() / "proc/loadavg") << "0.50 0.25 0.10 1/123 4567\n";
  std::ofstream(dir.path() / "proc/uptime") << "12345.67 2000.00\n";
  std::ofstream(dir.path() / "proc/meminfo") << "MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    8192 kB\n";
  std::ofstream(dir.path() / "proc/stat") << "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\nintr 5\n";
  protocol::HeartbeatRequest hb;
  collect_system_stats(Root(dir.path()), dir.path(), hb);
  CHECK(hb.boot_id == "0f6d2c5e-7a3b-4f0e-9b1d-2a3c4d5e6f70");
  CHECK(hb.load1 == doctest::Approx(0.5));
  CHECK(hb.load5 == doctest::Approx(0.25));
  CHECK(hb.load15 == doctest::Approx(0.1));
  CHECK(hb.uptime_s == 12345);
  CHECK(hb.mem_total_bytes == 16384ull * 1024);
  CHECK(hb.mem_available_bytes == 8192ull * 1024);
  CHECK(hb.cpu_count == 2);
  CHECK(hb.disk_total_bytes > 0);
  CHECK(hb.disk_free_bytes <= hb.disk_total_bytes);
}

TEST_CASE("missing /proc files leave zeros while the files present are still read") {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "proc");
  std::ofstream(dir.path() / "proc/uptime") << "42.5 1.0\n";
  protocol::HeartbeatRequest hb;
  hb.cpu_count = 8;  // counted afresh: with no /proc/stat, 0 (not what was there)
  collect_system_stats(Root(dir.path()), dir.path() / "missing", hb);
  CHECK(hb.uptime_s == 42);
  CHECK(hb.boot_id.empty());
  CHECK(hb.cpu_count == 0);
  CHECK(hb.mem_total_bytes == 0);
  CHECK(hb.disk_total_bytes == 0);
}

TEST_CASE("HTTP statuses map to the exit codes scripts branch on") {
  CHECK(errc_for_http_status(401) == Errc::refused);
  CHECK(errc_for_http_status(403) == Errc::refused);
  CHECK(errc_for_http_status(409) == Errc::refused);  // node_exists
  CHECK(errc_for_http_status(429) == Errc::temporary);  // enroll_rate_limited
  CHECK(errc_for_http_status(400) == Errc::data);
  CHECK(errc_for_http_status(413) == Errc::data);
  CHECK(errc_for_http_status(503) == Errc::temporary);
  CHECK(errc_for_http_status(502) == Errc::unavailable);
  CHECK(errc_for_http_status(404) == Errc::internal);
}
