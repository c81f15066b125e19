// The lifecycle commands of the real cairn-control on loopback: init --force confirmation,
// admin create/revoke (checked per request), node allow-reenroll, node_exists for a second
// machine with an enrolled id, and `events` listing it.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/uuid.hpp"
#include "tests/support/control_server.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {
namespace {

using namespace std::chrono_literals;

Result<HttpResponse> post(const TlsOptions& tls, const std::string& url, std::string body, HttpHeaders headers = {}) {
  auto client = make_http_client(tls);
  HttpRequest request;
  request.method = "POST";
  request.url = url;
  request.body = std::move(body);
  request.headers = std::move(headers);
  request.total_timeout = 15s;
  return client->send(request);
}

std::string token_of(const ControlServer& server) {
  const auto r = server.cli({"token", "create", "--uses", "5"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  std::string token = trim_output(r.out);
  REQUIRE(!token.empty());
  return token;
}

// POST /v1/enroll for `node_id` with a fresh key; the HTTP status and the error code.
std::pair<long, std::string> enroll(const ControlServer& server, const std::string& node_id, const std::string& token) {
  auto key = generate_key(KeyType::ed25519);
  REQUIRE(key);
  protocol::EnrollRequest request;
  request.identity.node_id = node_id;
  request.identity.hostname = "machine-" + random_hex(2);
  request.csr_pem = *make_csr_pem(key->get(), node_id);
  auto response = post(server.anonymous(), server.url("/v1/enroll"), dump_json(protocol::to_json(request)),
                       {{"Authorization", "Bearer " + token}});
  REQUIRE_MESSAGE(response, (response ? "" : response.error().message));
  auto e = protocol::decode_error_body(response->body);
  return {response->status, e ? e->code : ""};
}

Json json_out(const RunResult& r) {
  auto j = parse_json(r.out, "cairn-control --json output");
  REQUIRE_MESSAGE(j, "stdout: " << r.out << "\nstderr: " << r.err);
  return *j;
}

}  // namespace

TEST_CASE("init --force on an initialized state dir needs --yes-replace-ca") {
  TempDir dir;
  const auto state = (dir.path() / "state").string();
  REQUIRE(run_capture({control_binary(), "init", "--state", state}, dir.path()).exit_code == 0);
  const auto ca_before = slurp(dir.path() / "state" / "ca.crt");
  const auto forced = run_capture({control_binary(), "init", "--state", state, "--force"}, dir.path());
  CHECK(forced.exit_code == 78);  // EX_CONFIG
  CHECK(forced.err.find("--yes-replace-ca") != std::string::npos);
  CHECK(slurp(dir.path() / "state" / "ca.crt") == ca_before);
  const auto confirmed =
      run_capture({control_binary(), "init", "--state", state, "--force", "--yes-replace-ca"}, dir.path());
  CHECK_MESSAGE(confirmed.exit_code == 0, confirmed.err);
  CHECK(slurp(dir.path() / "state" / "ca.crt") != ca_before);
}

TEST_CASE("serve refuses bad lifecycle flags with a usage error") {
  TempDir dir;
  const auto state = (dir.path() / "state").string();
  REQUIRE(run_capture({control_binary(), "init", "--state", state}, dir.path()).exit_code == 0);
  for (const std::vector<std::string>& flags : {std::vector<std::string>{"--rotation-grace", "soon"},
                                               std::vector<std::string>{"--node-label-keys", "a b"}}) {
    std::vector<std::string> argv = {control_binary(), "serve", "--state", state, "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    const auto r = run_capture(argv, dir.path());
    CAPTURE(flags[0]);
    CHECK(r.exit_code == 64);
    CHECK(r.err.find(flags[0]) != std::string::npos);
  }
}

TEST_CASE("admin create makes a working credential; admin revoke refuses its next request") {
  ControlServer server;
  const auto out = server.scratch() / "creds";
  const auto created = server.cli({"admin", "create", "alice", "--out", out.string()});
  REQUIRE_MESSAGE(created.exit_code == 0, created.err);
  const auto key_mode = std::filesystem::status(out / "alice.key").permissions();
  CHECK((key_mode & std::filesystem::perms::all) == (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));

  const std::vector<std::string> as_alice = {"--server", server.url(), "--admin-cert", (out / "alice.crt").string(),
                                             "--admin-key", (out / "alice.key").string(),
                                             "--ca", (server.state() / "ca.crt").string(), "--json"};
  auto run_as_alice = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {control_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), as_alice.begin(), as_alice.end());
    return run_capture(argv, server.scratch());
  };
  const auto listed = run_as_alice({"node", "list"});
  CHECK_MESSAGE(listed.exit_code == 0, listed.err);

  const auto admins = server.cli({"admin", "list", "--json"});
  REQUIRE_MESSAGE(admins.exit_code == 0, admins.err);
  CHECK(json_out(admins)["admins"].size() == 2);

  // alice cannot revoke herself; the first admin revokes her; her next call is refused
  CHECK(run_as_alice({"admin", "revoke", "alice"}).exit_code == 65);
  const auto revoked = server.cli({"admin", "revoke", "alice"});
  CHECK_MESSAGE(revoked.exit_code == 0, revoked.err);
  const auto refused = run_as_alice({"node", "list"});
  CHECK(refused.exit_code == 77);
  CHECK(refused.out.find("admin_revoked") != std::string::npos);
  CHECK(server.cli({"admin", "create", "alice", "--out", out.string()}).exit_code == 78);  // files exist
}

TEST_CASE("a second machine with an enrolled id is refused (node_exists), recorded, and let in by allow-reenroll") {
  ControlServer server;
  const std::string id = random_uuid().str();
  const auto token = token_of(server);
  CHECK(enroll(server, id, token) == std::pair<long, std::string>{200, ""});
  CHECK(enroll(server, id, token) == std::pair<long, std::string>{409, "node_exists"});

  const auto events = server.cli({"events", "--node", id, "--since", "1h", "--json"});
  REQUIRE_MESSAGE(events.exit_code == 0, events.err);
  const auto list = json_out(events)["events"];
  REQUIRE(list.size() == 1);
  CHECK(list[0]["kind"] == "enroll.node_exists");
  CHECK(list[0]["node"] == id);
  const auto table = server.cli({"events"});
  CHECK(table.exit_code == 0);
  CHECK(table.out.find("enroll.node_exists") != std::string::npos);
  CHECK(server.cli({"events", "--since", "yesterday"}).exit_code == 64);

  const auto allowed = server.cli({"node", "allow-reenroll", id});
  REQUIRE_MESSAGE(allowed.exit_code == 0, allowed.err);
  CHECK(enroll(server, id, token) == std::pair<long, std::string>{200, ""});
  CHECK(enroll(server, id, token) == std::pair<long, std::string>{409, "node_exists"});  // once
  CHECK(server.cli({"node", "allow-reenroll", random_uuid().str()}).exit_code == 65);  // 404: no such node
}

}  // namespace cairn::test
