// inventory on a fake host tree (everything through Root), and reboot: completed first,
// then the reboot through (fake) systemd, never before.
#include <doctest/doctest.h>

#include <fstream>

#include "agent/tasks/inventory.hpp"
#include "agent/tasks/runner.hpp"
#include "common/log.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/fake_systemd.hpp"

using namespace cairn;
using namespace cairn::agent::tasks;
using namespace std::chrono;

namespace {

void put(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

}  // namespace

TEST_CASE("inventory reads CPU, memory, disks, NICs, OS, kernel and DMI through the root") {
  test::TempDir dir;
  const auto& r = dir.path();
  put(r / "proc/cpuinfo", "processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\n");
  put(r / "proc/meminfo", "MemTotal:        2048000 kB\nMemFree:  1 kB\n");
  put(r / "sys/block/vda/size", "2097152\n");
  put(r / "sys/block/vda/queue/rotational", "0\n");
  put(r / "sys/block/loop0/size", "8\n");
  put(r / "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
  put(r / "sys/class/net/eth0/operstate", "up\n");
  put(r / "sys/class/net/eth0/mtu", "1500\n");
  put(r / "sys/class/net/lo/address", "00:00:00:00:00:00\n");
  put(r / "etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n");
  put(r / "proc/sys/kernel/osrelease", "6.1.0-test\n");
  put(r / "sys/class/dmi/id/sys_vendor", "QEMU\n");
  put(r / "sys/class/dmi/id/product_name", "Standard PC\n");

  Root root(r);
  const Json inv = collect_inventory(root);
  CHECK(inv["cpu"]["count"] == 2);
  CHECK(inv["cpu"]["model"] == "Test CPU 9000");
  CHECK(inv["memory"]["total_bytes"] == 2048000ull * 1024);
  REQUIRE(inv["disks"].size() == 1);  // loop devices are not disks
  CHECK(inv["disks"][0]["name"] == "vda");
  CHECK(inv["disks"][0]["size_bytes"] == 2097152ull * 512);
  CHECK(inv["disks"][0]["rotational"] == false);
  REQUIRE(inv["nics"].size() == 1);  // nor is lo a NIC
  CHECK(inv["nics"][0]["mac"] == "52:54:00:12:34:56");
  CHECK(inv["nics"][0]["mtu"] == 1500);
  CHECK(inv["os"]["id"] == "debian");
  CHECK(inv["os"]["version_id"] == "12");
  CHECK(inv["kernel"]["release"] == "6.1.0-test");
  CHECK(inv["dmi"]["sys_vendor"] == "QEMU");

  const TaskContext ctx{.root = root, .clock = SystemClock::instance()};
  auto result = run_task("inventory", Json::object(), {}, ctx);
  REQUIRE(result.ok());
  auto parsed = parse_json(result.output, "inventory output");
  REQUIRE(parsed);
  CHECK((*parsed)["os"]["id"] == "debian");
  CHECK(run_task("inventory", {{"deep", true}}, {}, ctx).reason == protocol::FailureReason::invalid_args);
}

TEST_CASE("inventory of an empty root is empty, not an error") {
  test::TempDir dir;
  Root root(dir.path());
  const Json inv = collect_inventory(root);
  CHECK(inv["cpu"]["count"] == 0);
  CHECK(inv["disks"].empty());
  CHECK(inv["os"]["id"] == "");
}

namespace {
struct Channel final : TaskChannel {
  std::shared_ptr<test::FakeSystemdState> systemd;
  bool complete_works = true;
  std::shared_ptr<std::vector<std::string>> order;
  Result<protocol::ExtendResponse> extend(const std::string&, const protocol::ExtendRequest&) override {
    return protocol::ExtendResponse{60, false};
  }
  Result<protocol::CompleteResponse> complete(const std::string&, const protocol::CompleteRequest& r) override {
    std::lock_guard l(systemd->m);
    order->push_back("complete " + r.outcome);
    if (!complete_works) return fail(Errc::refused, "stale fence");
    return protocol::CompleteResponse{r.outcome};
  }
};
}  // namespace

TEST_CASE("reboot is completed first and only then asks systemd to reboot") {
  for (bool complete_works : {true, false}) {
    CAPTURE(complete_works);
    log::set_min_level(log::Level::critical);
    auto systemd = std::make_shared<test::FakeSystemdState>();
    auto order = std::make_shared<std::vector<std::string>>();
    KindSettings settings;
    settings.systemd = test::FakeSystemd::factory(systemd);
    Root root("/");
    {
      Runner runner(settings, {}, root, SystemClock::instance(),
                    [&] {
                      auto c = std::make_unique<Channel>();
                      c->systemd = systemd;
                      c->complete_works = complete_works;
                      c->order = order;
                      return c;
                    },
                    nullptr);
      runner.start({.id = "r1", .kind = "reboot", .args = Json::object(), .fence = 1, .attempt = 1, .timeout_s = 0,
                    .lease_s = 60});
      REQUIRE(test::wait_for([&] { return runner.running_count() == 0; }, seconds(20)));
    }
    std::lock_guard l(systemd->m);
    REQUIRE_FALSE(order->empty());
    CHECK(order->front() == "complete succeeded");
    // A reboot whose completion control refused would come back after the lease: none then.
    CHECK(systemd->calls == (complete_works ? std::vector<std::string>{"reboot"} : std::vector<std::string>{}));
  }
}
