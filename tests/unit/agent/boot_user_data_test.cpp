// The bootstrap from the cloud's user-data (issue 16, h-userdata): the format, its errors,
// the precedence (kernel command line > fw-cfg > user-data; config file and flags over all),
// each cloud's user-data from its fake metadata server on 127.0.0.1, and the token never in
// the agent's output.
#include <doctest/doctest.h>

#include <fstream>

#include "agent/boot/bootstrap.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "identity/sources/user_data.hpp"
#include "tests/support/fake_clouds.hpp"
#include "tests/support/process.hpp"
#include "tests/unit/identity/fake_host.hpp"

namespace cairn::agent::boot {
namespace {

using cairn::test::FakeCloud;

// A fake host root with a kernel command line that says nothing of Cairn.
struct FakeHost : cairn::test::FakeHost {
  FakeHost() { cmdline("console=ttyS0"); }
};

const std::string kCa(64, 'c');
const std::string kSecret = "tok-Sup3rSecret-userdata-0001";

std::string config_json(const std::string& control = "https://ud.example:8443") {
  return R"({"control_url": ")" + control + R"(", "ca_fingerprint": ")" + kCa + R"(", "token": ")" + kSecret +
         R"(", "labels": {"role": "web", "zone": "z1"}})";
}

bool has(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

// A fake host whose configuration points the agent at `fake` for `cloud` (as the identity
// tests do: this machine has no DMI, so nothing else is asked).
identity::Config config_for(const FakeHost& host, const std::string& cloud, const FakeCloud& fake) {
  auto config = host.config();
  config.forced_clouds = {cloud};
  config.base_urls[cloud] = fake.base_url();
  return config;
}

Result<Bootstrap> read_with(const FakeHost& host, const identity::Config& config) {
  auto http = make_http_client();
  return read_bootstrap(host.root(), config, *http);
}

TEST_CASE("user-data is the fw-cfg JSON object, alone or after a #cairn-config line; its source names the cloud") {
  for (const std::string& text : {config_json(), "#cairn-config\n" + config_json(), "#cairn-config\r\n" + config_json(),
                                  "\n  " + config_json() + "\n"}) {
    CAPTURE(text);
    auto b = parse_user_data(text, "gcp");
    REQUIRE(b.has_value());
    REQUIRE(b->has_value());
    const auto& got = **b;
    CHECK(got.control_url->value == "https://ud.example:8443");
    CHECK(got.control_url->source == "user-data (gcp)");
    CHECK(got.ca_fingerprint->value == kCa);
    CHECK(got.token->value == kSecret);
    REQUIRE(got.labels.has_value());
    CHECK(got.labels->values == std::map<std::string, std::string>{{"role", "web"}, {"zone", "z1"}});
    CHECK(got.labels->source == "user-data (gcp)");
  }
}

TEST_CASE("user-data that is not Cairn's (cloud-config, script, MIME) is ignored, not an error") {
  for (const char* text : {"#cloud-config\npackages: [htop]\n", "#!/bin/sh\necho hi\n",
                           "Content-Type: multipart/mixed; boundary=\"x\"\n", "plain words"}) {
    CAPTURE(text);
    auto b = parse_user_data(text, "aws");
    REQUIRE(b.has_value());
    CHECK_FALSE(b->has_value());
  }
}

TEST_CASE("Cairn user-data that is wrong stops the boot, names the key, and never quotes the token") {
  struct Case {
    std::string text;
    std::string says;
  };
  const Case cases[] = {
      {"#cairn-config\n{\"token\": \"" + kSecret, "not valid JSON"},
      {"{\"token\": \"" + kSecret + "\",}", "not valid JSON"},
      {"#cairn-config\n[\"" + kSecret + "\"]", "not a JSON object"},
      {"{\"token\": \"" + kSecret + "\", \"contrl_url\": \"https://x\"}", "unknown key 'contrl_url'"},
      {"{\"token\": \"" + kSecret + "\", \"persist\": \"disk\"}", "persist cannot be set from user-data"},
      {"{\"token\": \"" + kSecret + "\", \"base\": \"base@sha256:" + std::string(64, 'a') + "\"}",
       "base cannot be set from user-data"},
      {"{\"token\": 5}", "token is not a string"},
      {"{\"token\": \"a\\u0001b\"}", "token holds a control character"},
      {"{\"control_url\": \"http://plain:80\"}", "not https://"},
      {"{\"labels\": [\"a\"]}", "labels is not a JSON object"},
      {"{\"labels\": {\"ro le\": \"x\"}}", "'ro le' is not a label key"},
      {"{\"labels\": {\"role\": 1}}", "labels.role is not a string"},
      {"{\"labels\": {\"role\": \"" + std::string(256, 'v') + "\"}}", "longer than 255 bytes"},
      {"#cloud-config\ncairn:\n  control_url: https://x\n", "a #cloud-config with a cairn: key is not read"},
      {"{\"token\": \"" + kSecret + "\", \"pad\": \"" + std::string(kMaxUserDataConfigBytes, 'p') + "\"}",
       "larger than 65536 bytes"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.says);
    auto b = parse_user_data(c.text, "azure");
    REQUIRE_FALSE(b.has_value());
    CHECK(b.error().code == Errc::config);
    CHECK(has(b.error().message, c.says));
    CHECK(has(b.error().message, "user-data (azure)"));
    CHECK_FALSE(has(b.error().message + b.error().hint, kSecret));
  }
  Json many = Json::object();
  for (int i = 0; i <= static_cast<int>(kMaxLabels); ++i) many["labels"]["k" + std::to_string(i)] = "v";
  auto too_many = parse_user_data(dump_json(many, -1), "aws");
  REQUIRE_FALSE(too_many.has_value());
  CHECK(has(too_many.error().message, "at most 32"));
}

TEST_CASE("fw-cfg also takes labels; the same checks apply there") {
  auto fw = parse_fw_cfg_config(R"({"labels": {"rack": "r1"}, "persist": "disk"})");
  REQUIRE(fw.has_value());
  CHECK(fw->labels->values.at("rack") == "r1");
  CHECK(fw->labels->source == kFwCfgSource);
  CHECK_FALSE(parse_fw_cfg_config(R"({"labels": {"rack": 1}})").has_value());
}

TEST_CASE("every cloud's user-data is read from its metadata server under its rules and named as the source") {
  for (const char* cloud : {"aws", "gcp", "azure", "digitalocean", "hetzner", "openstack"}) {
    CAPTURE(cloud);
    FakeHost host;
    FakeCloud fake(cloud);
    fake.set_user_data("#cairn-config\n" + config_json());
    auto b = read_with(host, config_for(host, cloud, fake));
    REQUIRE_MESSAGE(b.has_value(), b.error().message);
    REQUIRE(b->control_url.has_value());
    CHECK(b->control_url->value == "https://ud.example:8443");
    CHECK(b->control_url->source == "user-data (" + std::string(cloud) + ")");
    CHECK(b->token->value == kSecret);
    CHECK(b->labels->values.at("zone") == "z1");
    CHECK(fake.user_data_requests() >= 1);
    CHECK(fake.refused() == 0);  // every rule of the cloud was followed
    REQUIRE(b->notes.size() == 1);
    CHECK(has(b->notes[0], std::string("user-data ") + cloud + ": answered"));
    CHECK_FALSE(has(b->notes[0], kSecret));
  }
}

TEST_CASE("an instance without user-data gives nothing from it, and the boot goes on with what it has") {
  for (const char* cloud : {"aws", "gcp", "azure", "digitalocean", "hetzner", "openstack"}) {
    CAPTURE(cloud);
    FakeHost host;
    host.cmdline("cairn.control=https://from-cmdline:1");
    FakeCloud fake(cloud);
    auto b = read_with(host, config_for(host, cloud, fake));
    REQUIRE_MESSAGE(b.has_value(), b.error().message);
    CHECK(b->control_url->source == kCmdlineSource);
    CHECK_FALSE(b->token.has_value());
    REQUIRE(b->notes.size() == 1);
    CHECK(has(b->notes[0], "no user-data"));
    CHECK(fake.user_data_requests() >= 1);
  }
}

TEST_CASE("GCP: the cairn-config attribute is read before user-data") {
  FakeHost host;
  FakeCloud fake("gcp");
  fake.set_user_data(config_json("https://from-cairn-config:1"), "cairn-config");
  auto b = read_with(host, config_for(host, "gcp", fake));
  REQUIRE(b.has_value());
  CHECK(b->control_url->value == "https://from-cairn-config:1");
}

TEST_CASE("the kernel command line wins over fw-cfg, fw-cfg over user-data; the config file over all") {
  FakeHost host;
  host.cmdline("console=ttyS0 cairn.control=https://cmdline:1");
  host.write(std::string(kFwCfgConfigPath), R"({"control_url": "https://fwcfg:2", "token": "fw-token"})");
  FakeCloud fake("openstack");
  fake.set_user_data(config_json("https://userdata:3"));
  auto b = read_with(host, config_for(host, "openstack", fake));
  REQUIRE(b.has_value());
  CHECK(b->control_url->value == "https://cmdline:1");
  CHECK(b->control_url->source == kCmdlineSource);
  CHECK(b->token->value == "fw-token");
  CHECK(b->token->source == kFwCfgSource);
  CHECK(b->ca_fingerprint->value == kCa);  // only user-data gave it
  CHECK(b->ca_fingerprint->source == "user-data (openstack)");
  CHECK(b->labels->source == "user-data (openstack)");

  AgentConfig config;
  config.ca_fingerprint = std::string(64, 'd');
  config.labels = {{"role", "db"}};
  const auto used = apply(config, *b);
  CHECK(config.ca_fingerprint == std::string(64, 'd'));
  CHECK(used.ca_fingerprint->source == "config file or flag");
  CHECK(config.control_url == "https://cmdline:1");
  // Labels: the config file's keys win, user-data fills the others; both named.
  CHECK(config.labels == std::map<std::string, std::string>{{"role", "db"}, {"zone", "z1"}});
  CHECK(used.labels->source == "user-data (openstack) and config file");
}

TEST_CASE("no cloud is probed unless the DMI hint, a forced cloud or a configured metadata URL points at it") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.set_user_data(config_json());
  auto nothing = read_with(host, host.config());
  REQUIRE(nothing.has_value());
  CHECK_FALSE(nothing->control_url.has_value());
  CHECK(nothing->notes.empty());

  // The DMI says GCP: AWS's URL is not configured, so only GCP is asked (and it is down here).
  host.dmi("sys_vendor", "Google");
  host.dmi("product_name", "Google Compute Engine");
  auto config = host.config();
  config.base_urls["gcp"] = "http://127.0.0.1:1";
  config.connect_timeout = std::chrono::milliseconds(200);
  auto gcp_only = read_with(host, config);
  CHECK(fake.requests() == 0);
  REQUIRE_FALSE(gcp_only.has_value());  // no control URL anywhere and the user-data unreadable
  CHECK(gcp_only.error().code == Errc::unavailable);
  CHECK(has(gcp_only.error().message, "gcp"));

  // A configured metadata URL is enough to ask that cloud.
  config.base_urls["aws"] = fake.base_url();
  auto with_aws = read_with(host, config);
  REQUIRE(with_aws.has_value());
  CHECK(with_aws->control_url->source == "user-data (aws)");
}

TEST_CASE("Azure userData that is not base64 is a failure naming the URL, never its bytes") {
  FakeHost host;
  FakeCloud fake("azure");
  fake.set_raw_azure_user_data("!!not*base64 " + kSecret);
  auto b = read_with(host, config_for(host, "azure", fake));
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error().code == Errc::unavailable);  // left without a control URL
  CHECK(has(b.error().message, "userData is not base64"));
  CHECK_FALSE(has(b.error().message + b.error().hint, kSecret));

  // With a control URL from elsewhere the boot goes on, the failure in the notes.
  host.cmdline("cairn.control=https://cmdline:1");
  auto with_cmdline = read_with(host, config_for(host, "azure", fake));
  REQUIRE(with_cmdline.has_value());
  REQUIRE(with_cmdline->notes.size() == 1);
  CHECK(has(with_cmdline->notes[0], "failed"));
  CHECK_FALSE(has(with_cmdline->notes[0], kSecret));
}

TEST_CASE("user-data over 64 KiB is refused as too large") {
  FakeHost host;
  FakeCloud fake("digitalocean");
  fake.set_user_data(config_json() + std::string(identity::kMaxUserDataBytes, ' '));
  auto b = read_with(host, config_for(host, "digitalocean", fake));
  REQUIRE_FALSE(b.has_value());
  CHECK(has(b.error().message, "larger than 64 KiB"));
}

TEST_CASE("user-data of Cairn that is wrong stops read_bootstrap with a config error") {
  FakeHost host;
  FakeCloud fake("hetzner");
  fake.set_user_data("#cairn-config\n{\"control_url\": \"https://x:1\", \"tokn\": \"" + kSecret + "\"}");
  auto b = read_with(host, config_for(host, "hetzner", fake));
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error().code == Errc::config);
  CHECK(has(b.error().message, "user-data (hetzner): unknown key 'tokn'"));
  CHECK_FALSE(has(b.error().message, kSecret));
}

// Real time for the HTTP budgets; the boot's waits between attempts recorded, not slept.
class NoWaitClock final : public Clock {
 public:
  [[nodiscard]] WallTime now() const override { return std::chrono::system_clock::now(); }
  [[nodiscard]] MonoTime monotonic() const override { return std::chrono::steady_clock::now(); }
  bool sleep_until(MonoTime deadline, int /*wake_fd*/) const override {
    waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - monotonic()));
    return false;
  }
  mutable std::vector<std::chrono::milliseconds> waits;
};

TEST_CASE("the boot tries the user-data again while the metadata server is not up, not when it is wrong") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.misbehave(cairn::test::Misbehaviour::http_500);
  AgentConfig config;
  config.root = host.root();
  config.identity = config_for(host, "aws", fake);
  NoWaitClock clock;
  auto down = read_bootstrap(config, 4, clock);
  REQUIRE_FALSE(down.has_value());
  CHECK(down.error().code == Errc::unavailable);
  CHECK(fake.requests() >= 4);  // one token PUT per attempt at least
  REQUIRE(clock.waits.size() == 3);
  CHECK(clock.waits[0] > std::chrono::milliseconds(400));
  CHECK(clock.waits[2] > clock.waits[0]);  // growing

  fake.misbehave(cairn::test::Misbehaviour::none);
  fake.set_user_data("{\"tokn\": \"x\"}");
  clock.waits.clear();
  auto wrong = read_bootstrap(config, 4, clock);
  REQUIRE_FALSE(wrong.has_value());
  CHECK(wrong.error().code == Errc::config);
  CHECK(clock.waits.empty());  // a configuration error is not retried

  fake.set_user_data(config_json());
  auto up = read_bootstrap(config, 4, clock);
  REQUIRE(up.has_value());
  CHECK(up->token->value == kSecret);
}

TEST_CASE("forget_token drops the token once enrollment used it") {
  Bootstrap b;
  b.token = Value{kSecret, "user-data (aws)"};
  forget_token(b);
  CHECK_FALSE(b.token.has_value());
  forget_token(b);  // nothing left: still fine
  CHECK_FALSE(b.token.has_value());
}

// The agent as a process: what it prints (stdout) and logs (stderr) never holds the token.
struct AgentRun {
  int exit_code = -1;
  std::string all;  // stdout + stderr
};

AgentRun run_agent(const FakeHost& host, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {CAIRN_AGENT_PATH, "--root", host.root().base().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = test::run_capture(argv, host.root().base(), std::chrono::seconds(60));
  return {r.exit_code, r.out + r.err};
}

TEST_CASE("cairn-agent config --explain names user-data (aws) as the source and hides the token") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.set_user_data("#cairn-config\n" + config_json());
  for (const char* json : {"", "--json"}) {
    CAPTURE(json);
    std::vector<std::string> args = {"--cloud", "aws", "--metadata-url", "aws=" + fake.base_url(), "config", "--explain"};
    if (*json) args.emplace_back(json);
    auto run = run_agent(host, args);
    CHECK(run.exit_code == 0);
    CHECK(has(run.all, "https://ud.example:8443"));
    CHECK(has(run.all, "user-data (aws)"));
    CHECK(has(run.all, "role=web,zone=z1"));
    CHECK(has(run.all, "(set, not shown)"));
    CHECK_FALSE(has(run.all, kSecret));
  }
}

TEST_CASE("the boot with a user-data token never logs it, enrolling or failing") {
  FakeHost host;
  FakeCloud fake("aws");
  // Nothing listens on port 1 of 127.0.0.1: enrollment fails (unavailable) after reading the token.
  fake.set_user_data("#cairn-config\n" + config_json("https://127.0.0.1:1"));
  auto boot = run_agent(host, {"--cloud", "aws", "--metadata-url", "aws=" + fake.base_url(), "--json", "boot",
                               "--handoff", "none", "--enroll-attempts", "1"});
  CHECK(boot.exit_code == 69);
  CHECK(has(boot.all, "user-data (aws)"));
  CHECK(has(boot.all, "stage=enroll"));
  CHECK_FALSE(has(boot.all, kSecret));

  // A malformed Cairn user-data holding the token: the error names the source, not the bytes.
  fake.set_user_data("#cairn-config\n{\"control_url\": \"https://127.0.0.1:1\", \"token\": \"" + kSecret);
  auto bad = run_agent(host, {"--cloud", "aws", "--metadata-url", "aws=" + fake.base_url(), "boot", "--handoff", "none"});
  CHECK(bad.exit_code == 78);
  CHECK(has(bad.all, "user-data (aws): not valid JSON"));
  CHECK_FALSE(has(bad.all, kSecret));
  // Nothing of the boot wrote the token to disk under the root.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(host.root().base())) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(!has(content, kSecret), entry.path());
  }
}

}  // namespace
}  // namespace cairn::agent::boot
