// The boot's bootstrap sources (kernel command line, fw-cfg) and its stage runner's retry
// policy, on a ManualClock (no sleeping).
#include <doctest/doctest.h>

#include <fstream>

#include "agent/boot/bootstrap.hpp"
#include "agent/boot/sealed_base.hpp"
#include "agent/boot/stages.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::agent::boot {
namespace {

using namespace std::chrono_literals;

TEST_CASE("the kernel command line gives the control URL, CA fingerprint, token and persist mode") {
  const auto b = parse_kernel_cmdline(
      "BOOT_IMAGE=/vmlinuz console=ttyS0 cairn.control=https://10.0.2.100:8443 cairn.ca=0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789ABCDEF "
      "cairn.token=tok.secret cairn.persist=disk cairn.id=0f0e cairn.debug=verbose cairn.retry=10 cairn.rounds=3 quiet\n");
  REQUIRE(b.has_value());
  REQUIRE(b->control_url.has_value());
  CHECK(b->control_url->value == "https://10.0.2.100:8443");
  CHECK(b->control_url->source == kCmdlineSource);
  CHECK(b->ca_fingerprint->value == "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");  // lower case
  CHECK(b->token->value == "tok.secret");
  CHECK(b->persist->value == "disk");
}

TEST_CASE("a cairn.* option the boot does not know, an empty value or a bad persist mode stops it with its name") {
  auto typo = parse_kernel_cmdline("console=ttyS0 cairn.contrl=https://x");
  REQUIRE_FALSE(typo.has_value());
  CHECK(typo.error().code == Errc::config);
  CHECK(typo.error().message.find("cairn.contrl") != std::string::npos);

  auto http = parse_kernel_cmdline("cairn.control=http://10.0.2.100:8443");
  REQUIRE_FALSE(http.has_value());
  CHECK(http.error().message.find("not https://") != std::string::npos);

  auto short_ca = parse_kernel_cmdline("cairn.ca=abcd01");
  REQUIRE_FALSE(short_ca.has_value());
  CHECK(short_ca.error().message.find("not a SHA-256") != std::string::npos);

  auto empty = parse_kernel_cmdline("cairn.token=");
  REQUIRE_FALSE(empty.has_value());
  CHECK(empty.error().message.find("token is empty") != std::string::npos);

  auto persist = parse_kernel_cmdline("cairn.persist=nvme");
  REQUIRE_FALSE(persist.has_value());
  CHECK(persist.error().hint.find("tmpfs") != std::string::npos);

  CHECK_FALSE(parse_kernel_cmdline(std::string(kMaxCmdlineBytes + 1, 'a')).has_value());
}

TEST_CASE("fw-cfg config is a JSON object of strings; the command line wins over it") {
  auto fw = parse_fw_cfg_config(R"({"control_url": "https://fw:1", "token": "fwtok", "persist": "tmpfs"})");
  REQUIRE(fw.has_value());
  CHECK(fw->token->source == kFwCfgSource);
  auto cmd = parse_kernel_cmdline("cairn.control=https://cmd:2");
  REQUIRE(cmd.has_value());
  const auto merged = merge(*cmd, *fw);
  CHECK(merged.control_url->value == "https://cmd:2");
  CHECK(merged.token->value == "fwtok");

  CHECK_FALSE(parse_fw_cfg_config("[1]").has_value());
  CHECK_FALSE(parse_fw_cfg_config(R"({"token": 5})").has_value());
  CHECK_FALSE(parse_fw_cfg_config(R"({"tokn": "x"})").has_value());
  CHECK_FALSE(parse_fw_cfg_config("{").has_value());
}

TEST_CASE("read_bootstrap reads /proc/cmdline and the fw-cfg entry through the root") {
  test::TempDir dir;
  const Root root(dir.path());
  std::filesystem::create_directories(root / "proc");
  std::ofstream(root / "proc/cmdline") << "console=ttyS0 cairn.ca=" << std::string(64, 'f') << "\n";
  auto only_cmdline = read_bootstrap(root);
  REQUIRE(only_cmdline.has_value());
  CHECK(only_cmdline->ca_fingerprint->value == std::string(64, 'f'));
  CHECK_FALSE(only_cmdline->token.has_value());

  std::filesystem::create_directories((root / kFwCfgConfigPath).parent_path());
  std::ofstream(root / kFwCfgConfigPath) << R"({"token": "from-fw", "ca_fingerprint": ")" << std::string(64, 'e') << R"("})";
  auto both = read_bootstrap(root);
  REQUIRE(both.has_value());
  CHECK(both->ca_fingerprint->value == std::string(64, 'f'));
  CHECK(both->token->value == "from-fw");
}

TEST_CASE("the config file and flags win over the bootstrap values; persist defaults to diskless") {
  AgentConfig config;
  config.control_url = "https://configured:1";
  Bootstrap b;
  b.control_url = Value{"https://boot:2", std::string(kCmdlineSource)};
  b.ca_fingerprint = Value{"aa", std::string(kCmdlineSource)};
  const auto used = apply(config, b);
  CHECK(config.control_url == "https://configured:1");
  CHECK(used.control_url->source == "config file or flag");
  CHECK(config.ca_fingerprint == "aa");
  CHECK(used.ca_fingerprint->source == kCmdlineSource);
  CHECK(used.persist->value == "tmpfs");
  CHECK(used.persist->source == "default");
}

TEST_CASE("cairn.pcrs= chooses the PCRs a new /persist key is sealed to; the config file wins; user-data may not") {
  auto cmd = parse_kernel_cmdline("quiet cairn.persist=disk cairn.pcrs=9+4+8+7");
  REQUIRE_MESSAGE(cmd.has_value(), cmd.error().message);
  REQUIRE(cmd->pcrs.has_value());
  CHECK(cmd->pcrs->source == kCmdlineSource);
  AgentConfig config;
  auto used = apply(config, *cmd);
  CHECK(config.persist.pcrs == std::vector<int>{4, 7, 8, 9});  // sorted
  CHECK(used.pcrs->value == "9+4+8+7");
  CHECK(used.pcrs->source == kCmdlineSource);

  // The agent's own config file names its PCRs: they win over the boot artifact's.
  AgentConfig configured;
  configured.persist.pcrs = {0, 7};
  configured.persist.pcrs_configured = true;
  used = apply(configured, *cmd);
  CHECK(configured.persist.pcrs == std::vector<int>{0, 7});
  CHECK(used.pcrs->value == "0+7");
  CHECK(used.pcrs->source == "config file or flag");

  // Neither: the default, named as such.
  AgentConfig plain;
  used = apply(plain, Bootstrap{});
  CHECK(plain.persist.pcrs == std::vector<int>{7});
  CHECK(used.pcrs->source == "default");

  auto fw = parse_fw_cfg_config(R"({"pcrs": "7+8"})");
  REQUIRE(fw.has_value());
  CHECK(fw->pcrs->value == "7+8");

  for (const char* bad : {"cairn.pcrs=24", "cairn.pcrs=7+", "cairn.pcrs=+7", "cairn.pcrs=seven", "cairn.pcrs=7++8",
                          "cairn.pcrs=-1"}) {
    auto r = parse_kernel_cmdline(bad);
    REQUIRE_FALSE_MESSAGE(r.has_value(), bad);
    CHECK(r.error().message.find("PCR list") != std::string::npos);
    CHECK(r.error().hint.find("7+8+9") != std::string::npos);
  }
  auto user_data = parse_user_data("#cairn-config\n{\"pcrs\": \"7\"}", "aws");
  REQUIRE_FALSE(user_data.has_value());
  CHECK(user_data.error().message.find("pcrs cannot be set from user-data") != std::string::npos);
}

TEST_CASE("parse_pcr_list takes systemd's 7+8+9 and commas, sorted and without repeats") {
  CHECK(*parse_pcr_list("7") == std::vector<int>{7});
  CHECK(*parse_pcr_list("8,7+7") == std::vector<int>{7, 8});
  CHECK(*parse_pcr_list("0+23") == std::vector<int>{0, 23});
  CHECK_FALSE(parse_pcr_list("").has_value());
  CHECK_FALSE(parse_pcr_list("7 8").has_value());
  CHECK_FALSE(parse_pcr_list("07x").has_value());
}

TEST_CASE("a temporary failure is retried with growing delays; a configuration error is not") {
  test::ManualClock clock;
  std::vector<std::chrono::milliseconds> waits;
  StageRunner runner(clock, [&](Clock::MonoTime deadline) {
    waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock.monotonic()));
    clock.advance(deadline - clock.monotonic());
    return false;
  });
  int calls = 0;
  auto ok = runner.run("enroll", {.max_attempts = 0, .first_delay = 100ms, .max_delay = 300ms},
                       [&]() -> Result<StageOutcome> {
                         if (++calls < 5) return fail(Errc::unavailable, "control did not answer", "");
                         return StageOutcome{.note = "enrolled"};
                       });
  CHECK(ok.has_value());
  CHECK(calls == 5);
  CHECK(waits == std::vector<std::chrono::milliseconds>{100ms, 200ms, 300ms, 300ms});
  REQUIRE(runner.records().size() == 1);
  CHECK(runner.records()[0].attempts == 5);
  CHECK(runner.records()[0].duration_ms == 900);

  calls = 0;
  auto bad = runner.run("persist", {.max_attempts = 5}, [&]() -> Result<StageOutcome> {
    ++calls;
    return fail(Errc::config, "no disk", "attach one");
  });
  REQUIRE_FALSE(bad.has_value());
  CHECK(calls == 1);
  CHECK(bad.error().code == Errc::config);
  CHECK(bad.error().message.find("boot stage persist") != std::string::npos);
  CHECK_FALSE(runner.records().back().ok);
}

TEST_CASE("a stage gives up after its attempts, and a stop signal ends the wait") {
  test::ManualClock clock;
  int calls = 0;
  StageRunner counted(clock, [&](Clock::MonoTime deadline) {
    clock.advance(deadline - clock.monotonic());
    return false;
  });
  auto out = counted.run("identity", {.max_attempts = 3, .first_delay = 10ms}, [&]() -> Result<StageOutcome> {
    ++calls;
    return fail(Errc::temporary, "fw-cfg not there yet", "");
  });
  CHECK_FALSE(out.has_value());
  CHECK(calls == 3);

  StageRunner stopped(clock, [](Clock::MonoTime) { return true; });
  calls = 0;
  auto s = stopped.run("enroll", {.max_attempts = 0}, [&]() -> Result<StageOutcome> {
    ++calls;
    return fail(Errc::unavailable, "down", "");
  });
  REQUIRE_FALSE(s.has_value());
  CHECK(calls == 1);
  CHECK(s.error().message.find("stopped by a signal") != std::string::npos);
}


// ---- sealed base (h-base) ----------------------------------------------------------------------

const std::string kDigest = "sha256:" + std::string(64, 'a');

TEST_CASE("cairn.base= on the kernel command line pins the base module; fw-cfg's \"base\" only when the command line is silent") {
  const auto b = parse_kernel_cmdline("console=ttyS0 cairn.base=base@" + kDigest + " quiet");
  REQUIRE(b.has_value());
  REQUIRE(b->base.has_value());
  CHECK(b->base->value == "base@" + kDigest);
  CHECK(b->base->source == kCmdlineSource);
  const auto ref = parse_base_ref(b->base->value, b->base->source);
  REQUIRE(ref.has_value());
  CHECK(ref->name == "base");
  CHECK(ref->digest == kDigest);

  const std::string other = "sha256:" + std::string(64, 'b');
  auto fw = parse_fw_cfg_config(R"({"base": "debian@)" + other + R"("})");
  REQUIRE(fw.has_value());
  CHECK(fw->base->source == kFwCfgSource);
  CHECK(merge(*b, *fw).base->value == "base@" + kDigest);  // the command line wins
  CHECK(merge(Bootstrap{}, *fw).base->value == "debian@" + other);
}

TEST_CASE("a base that is not NAME@sha256:<64 hex> stops the boot with the value and what to give") {
  for (const std::string& bad : std::vector<std::string>{"base", "base@latest", "base@sha256:abcd", "@sha256:" + std::string(64, 'a'),
                                "Base@sha256:" + std::string(64, 'a'), "base@sha256:" + std::string(64, 'A'),
                                "base@sha512:" + std::string(64, 'a'), "../x@sha256:" + std::string(64, 'a')}) {
    auto r = parse_kernel_cmdline("cairn.base=" + bad);
    REQUIRE_MESSAGE(!r.has_value(), bad);
    CHECK(r.error().code == Errc::config);
    CHECK_MESSAGE(r.error().message.find("kernel command line") != std::string::npos, r.error().message);
    CHECK_MESSAGE(!r.error().hint.empty(), bad);
  }
  auto fw = parse_fw_cfg_config(R"({"base": "base:1.0"})");
  REQUIRE_FALSE(fw.has_value());
  CHECK(fw.error().message.find(std::string(kFwCfgSource)) != std::string::npos);
}

TEST_CASE("read_bootstrap reads the base from <root>/proc/cmdline and the fw-cfg entry under the same root") {
  test::TempDir tmp;
  std::filesystem::create_directories(tmp.path() / "proc");
  std::ofstream(tmp.path() / "proc/cmdline") << "console=ttyS0 quiet\n";
  const auto fw = tmp.path() / kFwCfgConfigPath;
  std::filesystem::create_directories(fw.parent_path());
  std::ofstream(fw) << R"({"base": "base@)" << kDigest << R"("})";
  auto b = read_bootstrap(Root(tmp.path()));
  REQUIRE(b.has_value());
  REQUIRE(b->base.has_value());
  CHECK(b->base->value == "base@" + kDigest);
  CHECK(b->base->source == kFwCfgSource);
}

TEST_CASE("the sealed set puts the pinned base first and drops control's module of the same name") {
  const BaseRef base{"base", kDigest};
  std::vector<protocol::ModuleRef> desired(2);
  desired[0].name = "base";
  desired[0].digest = "sha256:" + std::string(64, 'c');  // control (or whoever runs it) names another base
  desired[1].name = "hello";
  desired[1].digest = "sha256:" + std::string(64, 'd');
  std::vector<std::string> dropped;
  const auto set = sealed_set(base, desired, dropped);
  REQUIRE(set.size() == 2);
  CHECK(set[0].name == "base");
  CHECK(set[0].digest == kDigest);
  CHECK(set[0].required);  // a base that fails fails the change before anything is mounted
  CHECK(set[1].name == "hello");
  REQUIRE(dropped.size() == 1);
  CHECK(dropped[0] == "base@sha256:" + std::string(64, 'c'));
}

TEST_CASE("only the pinned base may become /: refused when it failed, is missing, or came from another digest") {
  const BaseRef base{"base", kDigest};
  modules::AttachedModule good;
  good.name = "base";
  good.source = "127.0.0.1:5000/cairn/base@" + kDigest;
  modules::AttachedModule hello;
  hello.name = "hello";
  hello.source = "127.0.0.1:5000/cairn/hello@sha256:" + std::string(64, 'd');

  CHECK(check_sealed_base(base, {good, hello}, {}).has_value());

  // The registry served other bytes (or a bad signature): update() left the base out.
  auto failed = check_sealed_base(base, {hello}, {{"base", "manifest digest mismatch"}});
  REQUIRE_FALSE(failed.has_value());
  CHECK(failed.error().code == Errc::refused);
  CHECK(failed.error().message.find("base@" + kDigest) != std::string::npos);
  CHECK(failed.error().message.find("manifest digest mismatch") != std::string::npos);

  auto missing = check_sealed_base(base, {hello}, {});
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::refused);
  CHECK(missing.error().message.find("not in the union") != std::string::npos);

  // A base of an earlier boot (disk mode) kept because the pinned one did not verify.
  modules::AttachedModule stale = good;
  stale.source = "127.0.0.1:5000/cairn/base@sha256:" + std::string(64, 'e');
  auto other = check_sealed_base(base, {stale}, {});
  REQUIRE_FALSE(other.has_value());
  CHECK(other.error().code == Errc::refused);
  CHECK(other.error().message.find(stale.source) != std::string::npos);
  CHECK(!other.error().hint.empty());
}

TEST_CASE("the handoff file tells /init to switch_root into <root>/sysroot") {
  test::TempDir tmp;
  AgentConfig config;
  config.root = Root(tmp.path());
  REQUIRE(write_handoff(config).has_value());
  std::ifstream in(tmp.path() / kHandoffFile);
  std::string word, path;
  in >> word >> path;
  CHECK(word == "switch-root");
  CHECK(path == "/sysroot");
}

}  // namespace
}  // namespace cairn::agent::boot
