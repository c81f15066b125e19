// The "persist" section of the agent config (issue 15): defaults, values, and refusals.
#include <doctest/doctest.h>

#include <fstream>

#include "agent/config.hpp"
#include "agent/persist/runtime.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

Result<AgentConfig> load_with(const test::TempDir& dir, const std::string& persist_json) {
  std::filesystem::create_directories(dir.path() / "etc/cairn");
  std::ofstream(dir.path() / "etc/cairn/agent.json") << R"({"persist": )" << persist_json << "}";
  GlobalOptions o;
  o.root = dir.path().string();
  return load_agent_config(o);
}

}  // namespace

TEST_CASE("persist defaults: the largest empty disk, PCR 7, the TPM device, 1 GiB at least") {
  test::TempDir dir;
  GlobalOptions o;
  o.root = dir.path().string();
  auto cfg = load_agent_config(o);
  REQUIRE(cfg.has_value());
  CHECK(cfg->persist.disk == "largest-empty");
  CHECK(cfg->persist.pcrs == std::vector<int>{7});
  CHECK(cfg->persist.key_source == "tpm");
  CHECK(cfg->persist.tcti == "device:/dev/tpmrm0");
  auto v = persist::volume_config(*cfg);
  REQUIRE(v.has_value());
  CHECK(v->key_source == persist::KeySource::tpm);
  CHECK(v->min_bytes == 1024ull * 1024 * 1024);
  CHECK(v->mount_point == dir.path() / "persist");
}

TEST_CASE("persist settings are read from the config file") {
  test::TempDir dir;
  auto cfg = load_with(dir, R"({"disk": "by-id:virtio-data", "min_size_mib": 256, "pcrs": [0, 7],
                               "key_source": "escrow", "tcti": "swtpm:host=127.0.0.1,port=2321"})");
  REQUIRE_MESSAGE(cfg.has_value(), cfg.error().message);
  auto v = persist::volume_config(*cfg);
  REQUIRE(v.has_value());
  CHECK(v->disk.kind == persist::DiskRule::Kind::by_id);
  CHECK(v->policy.pcrs == std::vector<int>{0, 7});
  CHECK(v->key_source == persist::KeySource::escrow);
  CHECK(v->min_bytes == 256ull * 1024 * 1024);
}

TEST_CASE("bad persist settings are configuration errors naming the setting") {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"key_source": "auto"})", "key_source"},
      {R"({"pcrs": [7, 30]})", "pcrs"},
      {R"({"pcrs": []})", "pcrs"},
      {R"({"min_size_mib": 1})", "min_size_mib"},
      {R"({"disk": 5})", "disk"},
      {R"({"fallback": "escrow"})", "fallback"},
      {R"([])", "section"},
  };
  for (const auto& [json, names] : cases) {
    CAPTURE(json);
    test::TempDir dir;
    auto cfg = load_with(dir, json);
    REQUIRE_FALSE(cfg.has_value());
    CHECK(cfg.error().code == Errc::config);
    CHECK(cfg.error().message.find(names) != std::string::npos);
  }
  test::TempDir dir;
  auto cfg = load_with(dir, R"({"disk": "biggest"})");
  REQUIRE(cfg.has_value());  // the rule itself is checked where it is used
  auto v = persist::volume_config(*cfg);
  REQUIRE_FALSE(v.has_value());
  CHECK(v.error().code == Errc::config);
}
