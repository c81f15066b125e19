// `cairn-agent identity` as a process: the JSON/exit-code contract over a fake host root.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "agent/enroll/node_identity.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "identity/cascade.hpp"
#include "tests/support/fake_clouds.hpp"
#include "tests/unit/identity/fake_host.hpp"

namespace {

struct Run {
  int exit_code = -1;
  std::string out;
};

// Runs cairn-agent with args (already shell-quoted where needed), stdout captured.
Run run_agent(const std::string& args) {
  const std::string command = std::string(CAIRN_AGENT_PATH) + " " + args + " 2>/dev/null";
  Run run;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) run.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

}  // namespace

TEST_CASE("cairn-agent identity --json prints the identity and every attempt, exit 0") {
  cairn::test::FakeHost host;
  host.cmdline("cairn.id=6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d");
  auto run = run_agent("identity --json --explain --root " + quoted(host.root().base()));
  CHECK(run.exit_code == 0);
  auto j = cairn::parse_json(run.out, "cairn-agent output");
  REQUIRE(j);
  CHECK((*j)["command"] == "identity");
  CHECK((*j)["ok"] == true);
  CHECK((*j)["error"].is_null());
  CHECK((*j)["details"]["identity"]["uuid"] == "6f1c1b8e-3c39-4d2b-9a51-0d8f1a2b3c4d");
  CHECK((*j)["details"]["identity"]["source"] == "cmdline");
  CHECK((*j)["details"]["attempts"].size() == 10);
}

TEST_CASE("cairn-agent identity --explain shows a table of sources and the total time") {
  cairn::test::FakeHost host;
  cairn::test::FakeCloud fake("gcp");
  auto run = run_agent("--root " + quoted(host.root().base()) + " identity --explain --cloud gcp" +
                       " --metadata-url gcp=" + fake.base_url());
  CHECK(run.exit_code == 0);
  CHECK(run.out.find("source:    gcp") != std::string::npos);
  CHECK(run.out.find("region:    europe-west1 / europe-west1-b") != std::string::npos);
  CHECK(run.out.find("SOURCE") != std::string::npos);
  CHECK(run.out.find("no DMI hint for aws") != std::string::npos);
  CHECK(run.out.find("total: ") != std::string::npos);
  CHECK(fake.requests() >= 1);
}

TEST_CASE("cairn-agent identity exits 74 when the persist volume cannot hold identity.json") {
  cairn::test::FakeHost host;
  host.write("persist", "a file, not a directory");
  auto run = run_agent("identity --json --root " + quoted(host.root().base()));
  CHECK(run.exit_code == 74);
  auto j = cairn::parse_json(run.out, "cairn-agent output");
  REQUIRE(j);
  CHECK((*j)["ok"] == false);
  CHECK((*j)["error"]["code"] == "io");
  CHECK((*j)["stage"] == "identity");
}

TEST_CASE("cairn-agent identity --json exits 0 with valid JSON when the host's bytes are not UTF-8") {
  cairn::test::FakeHost host;
  host.dmi("sys_vendor", "Vendor\xff\xfe");
  host.dmi("product_name", "Board\xc3");
  host.dmi("product_serial", "\x80\x81");
  host.cmdline("quiet cairn.id=\xfe\xff");
  host.fw_cfg("\xc0\xaf");
  auto run = run_agent("identity --json --explain --root " + quoted(host.root().base()));
  CHECK(run.exit_code == 0);  // was 70: nlohmann's dump threw on the DMI bytes
  auto j = cairn::parse_json(run.out, "cairn-agent output");
  REQUIRE(j);
  CHECK((*j)["ok"] == true);
  CHECK((*j)["details"]["identity"]["source"] == "local");
  CHECK((*j)["details"]["platform_hint"]["sys_vendor"] == "Vendor\xef\xbf\xbd\xef\xbf\xbd");

  auto human = run_agent("identity --explain --root " + quoted(host.root().base()));
  CHECK(human.exit_code == 0);
  CHECK(human.out.find("sys_vendor 'Vendor\xef\xbf\xbd\xef\xbf\xbd'") != std::string::npos);
}

TEST_CASE("cairn-agent identity --explain says which hinted cloud failed and who answered instead") {
  cairn::test::FakeHost host;
  host.dmi("sys_vendor", "Hetzner");
  host.dmi("chassis_asset_tag", "To be filled by O.E.M.");
  cairn::test::FakeCloud fake("hetzner");
  fake.misbehave(cairn::test::Misbehaviour::http_500);
  auto run = run_agent("--root " + quoted(host.root().base()) + " identity --explain" +
                       " --metadata-url hetzner=" + fake.base_url());
  CHECK(run.exit_code == 0);
  CHECK(run.out.find("note: hetzner was named by the DMI hint but did not answer (") != std::string::npos);
  CHECK(run.out.find("HTTP 500); local answered instead") != std::string::npos);
  CHECK(run.out.find("note: DMI chassis_asset_tag 'To be filled by O.E.M.' is a firmware placeholder: ignored") !=
        std::string::npos);
  CHECK(fake.requests() >= 1);
}

TEST_CASE("the enrollment request of an identity from non-UTF-8 metadata serialises") {
  auto instance = cairn::test::default_fake_instance("gcp");
  instance.hostname = "node-\xff\xfe";
  instance.instance_type = "e2-\xc3";
  cairn::test::FakeHost host;
  cairn::test::FakeCloud fake("gcp", instance);
  auto config = host.config();
  config.forced_clouds = {"gcp"};
  config.base_urls["gcp"] = fake.base_url();
  auto http = cairn::make_http_client();
  const auto found = cairn::identity::discover(config, *http);
  REQUIRE(found.identity);
  REQUIRE(found.identity->source == "gcp");

  cairn::protocol::EnrollRequest request;
  request.identity = cairn::agent::to_node_identity(*found.identity);
  request.csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\n...";
  // The transport sends protocol::to_json(request).dump(): nlohmann's strict dump, which
  // throws on invalid UTF-8 (what made enroll fail before the cascade sanitised).
  std::string body;
  REQUIRE_NOTHROW(body = cairn::protocol::to_json(request).dump());
  auto back = cairn::protocol::decode_enroll_request(body);
  REQUIRE(back);
  CHECK(back->identity.hostname == "node-\xef\xbf\xbd\xef\xbf\xbd");
  CHECK(back->identity.instance_type == "e2-\xef\xbf\xbd");
  CHECK(back->identity.node_id == found.identity->uuid.str());
  CHECK(back->identity.source == "gcp");
}
