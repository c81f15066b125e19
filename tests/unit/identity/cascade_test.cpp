// The cascade as a whole: its time bound, its budget across clouds, its configuration
// and its JSON report.
#include <doctest/doctest.h>

#include <chrono>

#include "common/http.hpp"
#include "identity/cascade.hpp"
#include "tests/support/fake_clouds.hpp"
#include "tests/unit/identity/fake_host.hpp"
#include "tests/unit/identity/helpers.hpp"

using namespace std::chrono_literals;
using cairn::identity::Outcome;
using cairn::test::attempt_of;
using cairn::test::contains;
using cairn::test::FakeCloud;
using cairn::test::FakeHost;
using cairn::test::Misbehaviour;
using cairn::test::run_cascade;

namespace {

std::chrono::milliseconds timed_run(const cairn::identity::Config& config,
                                    cairn::identity::Discovery& out) {
  const auto start = std::chrono::steady_clock::now();
  out = run_cascade(config);
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
}

}  // namespace

TEST_CASE("a forced cloud whose server never answers cannot hold the cascade past 2 s") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.misbehave(Misbehaviour::never_answer);
  auto config = host.config();
  config.forced_clouds = {"aws"};
  config.base_urls["aws"] = fake.base_url();
  cairn::identity::Discovery d;
  const auto took = timed_run(config, d);
  CHECK(took < 2s);
  CHECK(fake.requests() >= 1);  // it was asked, and it hung
  const auto& a = attempt_of(d, "aws");
  CHECK(a.outcome == Outcome::failed);
  CHECK(contains(a.reason, "timed out"));
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
}

TEST_CASE("every cloud forced and none answering still ends under 2 s and falls back") {
  FakeHost host;
  std::vector<std::unique_ptr<FakeCloud>> fakes;
  auto config = host.config();
  for (const auto cloud : cairn::identity::kClouds) {
    fakes.push_back(std::make_unique<FakeCloud>(std::string(cloud)));
    fakes.back()->misbehave(Misbehaviour::never_answer);
    config.base_urls[std::string(cloud)] = fakes.back()->base_url();
    config.forced_clouds.emplace_back(cloud);
  }
  cairn::identity::Discovery d;
  const auto took = timed_run(config, d);
  CHECK(took < 2s);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
  // The clouds' shared budget ran out: the clouds it stopped say so, the later ones were
  // not asked, and --explain's notes name every forced cloud that did not answer.
  int blamed = 0;
  for (const auto& a : d.attempts) {
    if (contains(a.reason, "the clouds' shared 1200 ms budget")) ++blamed;
  }
  CHECK(blamed >= 2);
  // The last cloud finds the budget spent before it asks (not asked, or not sent).
  CHECK(contains(attempt_of(d, "openstack").reason, "the clouds' shared 1200 ms budget is spent"));
  REQUIRE(d.notes.size() == cairn::identity::kClouds.size());
  CHECK(contains(d.notes.back(), "openstack was forced by the configuration but did not answer"));
  CHECK(contains(d.notes.back(), "local answered instead"));
}

TEST_CASE("a cloud stopped by the shared budget blames it, one stopped by its own timeout does not") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.misbehave(Misbehaviour::never_answer);
  auto config = host.config();
  config.forced_clouds = {"aws"};
  config.base_urls["aws"] = fake.base_url();
  config.source_timeout = 600ms;
  config.cloud_budget = 300ms;
  auto d = run_cascade(config);
  CHECK(attempt_of(d, "aws").outcome == Outcome::failed);
  CHECK(contains(attempt_of(d, "aws").reason, "(the clouds' shared 300 ms budget ran out)"));
  REQUIRE(d.notes.size() == 1);
  CHECK(contains(d.notes[0], "the clouds' shared 300 ms budget ran out"));

  config.source_timeout = 300ms;
  config.cloud_budget = 1200ms;
  d = run_cascade(config);
  CHECK(attempt_of(d, "aws").outcome == Outcome::failed);
  CHECK(contains(attempt_of(d, "aws").reason, "timed out"));
  CHECK_FALSE(contains(attempt_of(d, "aws").reason, "shared"));
}

TEST_CASE("a hinted cloud that fails is named in the notes with the source that answered instead") {
  FakeHost host;
  host.dmi("sys_vendor", "Hetzner");
  host.dmi("product_uuid", "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d");
  FakeCloud fake("hetzner");
  fake.misbehave(Misbehaviour::http_500);
  auto config = host.config();
  config.base_urls["hetzner"] = fake.base_url();
  auto d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "dmi");
  REQUIRE(d.notes.size() == 1);
  CHECK(contains(d.notes[0], "hetzner was named by the DMI hint but did not answer ("));
  CHECK(contains(d.notes[0], "HTTP 500"));
  CHECK(contains(d.notes[0], "dmi answered instead"));
  CHECK(cairn::identity::discovery_to_json(d)["notes"] == cairn::Json(d.notes));

  fake.misbehave(Misbehaviour::none);
  d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "hetzner");
  CHECK(d.notes.empty());
}

TEST_CASE("a slow server past the source's time budget fails, one within it answers") {
  FakeHost host;
  cairn::test::HttpServer slow([](const cairn::test::HttpServer::Request&) {
    return cairn::test::HttpServer::Response{200, {}, R"({"droplet_id": 7, "region": "ams3"})",
                                              1500ms, false};
  });
  auto config = host.config();
  config.forced_clouds = {"digitalocean"};
  config.base_urls["digitalocean"] = slow.base_url();
  auto d = run_cascade(config);
  CHECK(attempt_of(d, "digitalocean").outcome == Outcome::failed);
  CHECK(contains(attempt_of(d, "digitalocean").reason, "timed out"));

  cairn::test::HttpServer brisk([](const cairn::test::HttpServer::Request&) {
    return cairn::test::HttpServer::Response{200, {}, R"({"droplet_id": 7, "region": "ams3"})",
                                              50ms, false};
  });
  config.base_urls["digitalocean"] = brisk.base_url();
  d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "digitalocean");
  CHECK(d.identity->region == "ams3");
}

TEST_CASE("a cloud that refuses the connection fails fast with the reason") {
  FakeHost host;
  std::string url;
  {
    cairn::test::HttpServer gone([](const auto&) { return cairn::test::HttpServer::Response{}; });
    url = gone.base_url();
  }  // the port is closed now
  auto config = host.config();
  config.forced_clouds = {"openstack"};
  config.base_urls["openstack"] = url;
  auto d = run_cascade(config);
  const auto& a = attempt_of(d, "openstack");
  CHECK(a.outcome == Outcome::failed);
  CHECK(contains(a.reason, url));
  CHECK(a.duration < 200ms);  // refused at once: no waiting for the connect timeout (250 ms)
}

TEST_CASE("every attempt is recorded with source, outcome, reason and duration") {
  FakeHost host;
  auto d = run_cascade(host.config());
  const char* order[] = {"cmdline", "fw_cfg",  "aws", "gcp", "azure",
                         "digitalocean", "hetzner", "openstack", "dmi", "local"};
  REQUIRE(d.attempts.size() == 10);
  std::chrono::microseconds sum{0};
  for (std::size_t i = 0; i < 10; ++i) {
    CHECK(d.attempts[i].source == order[i]);
    CHECK_FALSE(d.attempts[i].reason.empty());
    sum += d.attempts[i].duration;
  }
  CHECK(d.attempts.back().duration > 0us);  // local wrote identity.json: that takes time
  CHECK(d.total >= sum);
  const auto j = cairn::identity::discovery_to_json(d);
  CHECK(j["identity"]["source"] == "local");
  CHECK(j["attempts"].size() == 10);
  CHECK(j["attempts"][2]["outcome"] == "skipped");
  CHECK(j["attempts"][2]["reason"] == "no DMI hint for aws");
  CHECK(j["attempts"][9]["outcome"] == "answered");
  CHECK(j.contains("total_ms"));
}

TEST_CASE("the identity section of agent.json is read on top of the defaults") {
  cairn::identity::Config defaults;
  auto same = cairn::identity::config_from_json(nullptr, defaults);
  REQUIRE(same);
  CHECK(same->connect_timeout == 250ms);

  auto config = cairn::identity::config_from_json(
      cairn::Json::parse(R"({"base_urls": {"aws": "http://127.0.0.1:9"}, "clouds": ["gcp"],
                             "connect_timeout_ms": 100, "source_timeout_ms": 300,
                             "cloud_budget_ms": 900, "max_response_bytes": 4096})"),
      defaults);
  REQUIRE(config);
  CHECK(config->base_urls.at("aws") == "http://127.0.0.1:9");
  CHECK(config->forced_clouds == std::vector<std::string>{"gcp"});
  CHECK(config->connect_timeout == 100ms);
  CHECK(config->source_timeout == 300ms);
  CHECK(config->cloud_budget == 900ms);
  CHECK(config->max_response_bytes == 4096);

  const char* bad[] = {
      R"([])",
      R"({"base_urls": {"vultr": "http://127.0.0.1:9"}})",
      R"({"base_urls": {"aws": "ftp://127.0.0.1"}})",
      R"({"clouds": ["aws", 3]})",
      R"({"clouds": ["nimbus"]})",
      R"({"connect_timeout_ms": 0})",
      R"({"connect_timeout_ms": "250"})",
      R"({"max_response_bytes": 10})",
      R"({"timeout": 1})",
  };
  for (const char* text : bad) {
    CAPTURE(text);
    auto r = cairn::identity::config_from_json(cairn::Json::parse(text), defaults);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == cairn::Errc::config);
  }
}
