#include <doctest/doctest.h>

#include <fstream>

#include "agent/config.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent;

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
  CHECK(cfg->ca_file == "/ca.pem");
  CHECK(cfg->labels.at("rack") == "r7");
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
  CHECK(load_agent_config(missing).error().code == Errc::config);
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
  CHECK(load_agent_config(o).error().code == Errc::usage);
  o.metadata_urls.clear();
  o.clouds = {"amazon"};
  CHECK(load_agent_config(o).error().code == Errc::usage);
  o.clouds.clear();
  o.ca_fingerprint = "abc";
  CHECK(load_agent_config(o).error().code == Errc::config);
  o.ca_fingerprint = std::string(32, 'A') + ":" + std::string(32, 'b');
  auto cfg = load_agent_config(o);
  REQUIRE(cfg);
  CHECK(cfg->ca_fingerprint == std::string(32, 'a') + std::string(32, 'b'));
}
