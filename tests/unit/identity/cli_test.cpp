// `cairn-agent identity` as a process: the JSON/exit-code contract over a fake host root.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "common/json.hpp"
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
  CHECK((*j)["error"]["code"].is_string());
}
