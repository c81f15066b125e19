#include <doctest/doctest.h>

#include <fstream>
#include <optional>

#include "agent/config.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

// The error code of a load that must fail; nullopt (and the check fails) when it succeeded.
std::optional<Errc> refused_with(const GlobalOptions& o) {
  auto cfg = load_agent_config(o);
  if (cfg) return std::nullopt;
  return cfg.error().code;
}

}  // namespace

TEST_CASE("defaults put the persist root under --root and read no file when there is none") {
  test::TempDir dir;
  GlobalOptions o;
  o.root = dir.path().string();
  auto cfg = load_agent_config(o);
  REQUIRE(cfg);
  CHECK(cfg->persist_dir == dir.path() / "persist");
  CHECK(cfg->state_dir() == dir.path() / "persist/cairn");
  CHECK(cfg->token_file == dir.path() / "persist/cairn/bootstrap-token");
}

TEST_CASE("the config file is read under the root and flags win over it") {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "etc/cairn");
  std::ofstream(dir.path() / "etc/cairn/agent.json")
      << R"({"control_url": "https://file:1", "ca_file": "/ca.pem", "labels": {"rack": "r7"}})";
  GlobalOptions o;
  o.root = dir.path().string();
  o.control_url = "https://flag:2";
  auto cfg = load_agent_config(o);
  REQUIRE(cfg);
  CHECK(cfg->control_url == "https://flag:2");
  CHECK(cfg->ca_file == dir.path() / "ca.pem");  // a host path: under the root
  CHECK(cfg->labels.at("rack") == "r7");
}

TEST_CASE("host paths of the config file go through --root; relative ones are next to the file") {
  test::TempDir dir;
  const auto root = dir.path() / "root";
  std::filesystem::create_directories(root / "etc/cairn");
  std::filesystem::create_directories(dir.path() / "elsewhere");
  struct Case {
    const char* what;
    std::filesystem::path config;  // empty: the default <root>/etc/cairn/agent.json
    std::filesystem::path config_dir;
  };
  const Case cases[] = {
      {"default config file under the root", {}, root / "etc/cairn"},
      {"--config outside the root", dir.path() / "elsewhere/agent.json", dir.path() / "elsewhere"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const auto file = c.config.empty() ? root / "etc/cairn/agent.json" : c.config;
    std::ofstream(file, std::ios::trunc)
        << R"({"persist_dir": "/data", "ca_file": "/etc/cairn/ca.pem", "token_file": "token"})";
    GlobalOptions o;
    o.root = root.string();
    o.config = c.config.string();
    auto cfg = load_agent_config(o);
    REQUIRE(cfg);
    CHECK(cfg->persist_dir == root / "data");
    CHECK(cfg->state_dir() == root / "data/cairn");
    CHECK(cfg->ca_file == root / "etc/cairn/ca.pem");
    CHECK(cfg->token_file == c.config_dir / "token");
    CHECK(cfg->identity.persist_dir == root / "data");
    std::filesystem::remove(file);
  }
}

TEST_CASE("config_file_path: absolute under the root, relative beside the file, empty unset") {
  const Root root("/r");
  struct Case {
    const char* value;
    std::filesystem::path expect;
  };
  const Case cases[] = {{"/etc/cairn/ca.pem", "/r/etc/cairn/ca.pem"},
                        {"//persist", "/r/persist"},
                        {"ca.pem", "/cfg/ca.pem"},
                        {"../keys/token", "/cfg/../keys/token"},
                        {"", ""}};
  for (const auto& c : cases) {
    CAPTURE(c.value);
    CHECK(config_file_path(root, "/cfg/agent.json", c.value) == c.expect);
  }
  CHECK(config_file_path(Root("/"), "/etc/cairn/agent.json", "/persist") == "/persist");
  CHECK(config_file_path(root, "agent.json", "ca.pem") == "ca.pem");  // --config in the cwd
}

TEST_CASE("flags are taken as given, not through the root, and win over the file") {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "etc/cairn");
  std::ofstream(dir.path() / "etc/cairn/agent.json") << R"({"ca_file": "/ca.pem", "persist_dir": "/p"})";
  GlobalOptions o;
  o.root = dir.path().string();
  o.ca_file = "/flag/ca.pem";
  o.persist_dir = "/flag/persist";
  auto cfg = load_agent_config(o);
  REQUIRE(cfg);
  CHECK(cfg->ca_file == "/flag/ca.pem");
  CHECK(cfg->persist_dir == "/flag/persist");
  CHECK(cfg->token_file == "/flag/persist/cairn/bootstrap-token");
}

TEST_CASE("a broken config file is a config error naming the file") {
  test::TempDir dir;
  const auto path = dir.path() / "agent.json";
  struct Case {
    const char* text;
    const char* expect;
  };
  const Case cases[] = {{"{", "malformed JSON"}, {"[]", "not a JSON object"},
                        {R"({"labels": 5})", "type"}, {R"({"control_url": "http://c:1"})", "not https"}};
  for (const auto& c : cases) {
    CAPTURE(c.text);
    std::ofstream(path, std::ios::trunc) << c.text;
    GlobalOptions o;
    o.root = dir.path().string();
    o.config = path.string();
    auto cfg = load_agent_config(o);
    REQUIRE_FALSE(cfg);
    CHECK(cfg.error().code == Errc::config);
    CHECK(cfg.error().message.find(path.string()) != std::string::npos);
    CHECK(cfg.error().message.find(c.expect) != std::string::npos);
  }
  GlobalOptions missing;
  missing.config = (dir.path() / "nope.json").string();
  CHECK(refused_with(missing) == Errc::config);
}

// h-polexpiry
TEST_CASE("modules.policy_require_expiry is off by default, read as true or false, and nothing else") {
  test::TempDir dir;
  const auto path = dir.path() / "agent.json";
  GlobalOptions o;
  o.root = dir.path().string();
  o.config = path.string();
  std::ofstream(path, std::ios::trunc) << R"({"modules": {"registry": "127.0.0.1:5000/m"}})";
  auto cfg = load_agent_config(o);
  REQUIRE_MESSAGE(cfg, (cfg ? "" : cfg.error().message));
  CHECK_FALSE(cfg->module_policy_require_expiry);
  std::ofstream(path, std::ios::trunc) << R"({"modules": {"policy_require_expiry": true}})";
  cfg = load_agent_config(o);
  REQUIRE_MESSAGE(cfg, (cfg ? "" : cfg.error().message));
  CHECK(cfg->module_policy_require_expiry);
  for (const auto* bad : {R"({"modules": {"policy_require_expiry": "yes"}})", R"({"modules": {"policy_require_expiry": 1}})"}) {
    CAPTURE(bad);
    std::ofstream(path, std::ios::trunc) << bad;
    auto r = load_agent_config(o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::config);
    CHECK(r.error().message == path.string() + ": modules.policy_require_expiry is not true or false");
  }
}

TEST_CASE("--metadata-url must be SOURCE=URL") {
  GlobalOptions o;
  o.root = "/nonexistent-root";
  o.metadata_urls = {"aws"};
  auto cfg = load_agent_config(o);
  REQUIRE_FALSE(cfg);
  CHECK(cfg.error().code == Errc::usage);
  o.metadata_urls = {"aws=http://127.0.0.1:9"};
  REQUIRE(load_agent_config(o));
  CHECK(load_agent_config(o)->identity.base_urls.at("aws") == "http://127.0.0.1:9");
}

TEST_CASE("unknown cloud names and malformed CA fingerprints are refused up front") {
  GlobalOptions o;
  o.root = "/nonexistent-root";
  o.metadata_urls = {"aws2=http://127.0.0.1:9"};
  CHECK(refused_with(o) == Errc::usage);
  o.metadata_urls.clear();
  o.clouds = {"amazon"};
  CHECK(refused_with(o) == Errc::usage);
  o.clouds.clear();
  o.ca_fingerprint = "abc";
  CHECK(refused_with(o) == Errc::config);
  o.ca_fingerprint = std::string(32, 'A') + ":" + std::string(32, 'b');
  auto cfg = load_agent_config(o);
  REQUIRE(cfg);
  CHECK(cfg->ca_fingerprint == std::string(32, 'a') + std::string(32, 'b'));
}
