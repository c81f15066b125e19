// service.install / service.remove on a temp root with a fake systemd: archives written here
// byte by byte (ustar), so every hostile entry can be made; the real systemd only where it is
// PID 1 (skipped otherwise, with the reason).
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "agent/tasks/archive.hpp"
#include "agent/tasks/service.hpp"
#include "common/fs.hpp"
#include "tests/support/process.hpp"
#include "tests/support/skip.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/fake_systemd.hpp"

using namespace cairn;
using namespace cairn::agent::tasks;
using protocol::FailureReason;

namespace {

// One ustar entry (POSIX.1-1988 header + data padded to 512).
std::string tar_entry(const std::string& name, char type, const std::string& data = "", const std::string& link = "",
                      unsigned mode = 0644) {
  std::string h(512, '\0');
  auto put = [&](std::size_t off, std::size_t len, const std::string& v) { h.replace(off, std::min(len, v.size()), v.substr(0, len)); };
  auto octal = [](std::size_t width, unsigned long long v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%0*llo", static_cast<int>(width - 1), v);
    return std::string(buf);
  };
  put(0, 100, name);
  put(100, 8, octal(8, mode));
  put(108, 8, octal(8, 0));
  put(116, 8, octal(8, 0));
  put(124, 12, octal(12, type == '0' ? data.size() : 0));
  put(136, 12, octal(12, 1700000000));
  put(148, 8, std::string(8, ' '));
  h[156] = type;
  put(157, 100, link);
  put(257, 6, std::string("ustar\0", 6));
  put(263, 2, "00");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  put(148, 8, octal(7, sum) + std::string(1, '\0'));
  std::string body = type == '0' ? data : "";
  body.resize((body.size() + 511) / 512 * 512, '\0');
  return h + body;
}
std::string tar_end() { return std::string(1024, '\0'); }

std::string good_tar(const std::string& marker = "v1") {
  return tar_entry("./", '5', "", "", 0755) + tar_entry("bin/", '5', "", "", 0755) +
         tar_entry("bin/web", '0', "#!/bin/sh\nexec sleep infinity\n", "", 04755) +
         tar_entry("conf/app.conf", '0', marker + "\n") + tar_entry("current", '2', "", "conf") + tar_end();
}

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

struct Node {
  test::TempDir dir;
  Root root{dir.path()};
  std::shared_ptr<test::FakeSystemdState> systemd = std::make_shared<test::FakeSystemdState>();
  KindSettings settings;
  Node() { settings.systemd = test::FakeSystemd::factory(systemd); }

  TaskResult run(const std::string& kind, const Json& args) {
    const TaskContext ctx{.root = root, .clock = SystemClock::instance()};
    return run_task(kind, args, settings, ctx);
  }
  TaskResult install(const std::string& tar, Json extra = Json::object()) {
    Json args{{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web", "--port", "8080"}}};
    for (auto& [k, v] : extra.items()) args[k] = v;
    return run("service.install", args);
  }
  std::filesystem::path services() const { return root / "var/lib/cairn/services"; }
  std::filesystem::path unit_file() const { return root / "etc/systemd/system/cairn-web.service"; }
  std::vector<std::string> calls() {
    std::lock_guard l(systemd->m);
    return systemd->calls;
  }
  // Nothing but installed services in the services dir: no temp tree, no archive left.
  std::vector<std::string> leftovers() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(services(), ec)) {
      if (e.path().filename().string().starts_with(".")) out.push_back(e.path().filename().string());
    }
    return out;
  }
};

}  // namespace

TEST_CASE("service.install unpacks the archive, writes a sandboxed unit and starts it") {
  Node node;
  auto r = node.install(good_tar(), {{"cpu_quota", "50%"}, {"memory_max", "256M"}, {"env", {{"MODE", "a \"b\" $c %d"}}}});
  CAPTURE(r.error);
  REQUIRE(r.outcome == "succeeded");
  const auto tree = node.services() / "web";
  CHECK(test::slurp(tree / "conf/app.conf") == "v1\n");
  CHECK(std::filesystem::read_symlink(tree / "current") == "conf");
  struct stat st {};
  REQUIRE(::stat((tree / "bin/web").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0755);  // the setuid bit of the archive is dropped
  const auto unit = test::slurp(node.unit_file());
  for (const char* line : {"ExecStart=\"/var/lib/cairn/services/web/bin/web\" \"--port\" \"8080\"\n", "DynamicUser=yes\n",
                           "ProtectSystem=strict\n", "PrivateTmp=yes\n", "NoNewPrivileges=yes\n", "CPUQuota=50%\n",
                           "MemoryMax=256M\n", "Environment=\"MODE=a \\\"b\\\" $c %%d\"\n",
                           "WorkingDirectory=/var/lib/cairn/services/web\n"}) {
    CAPTURE(line);
    CHECK(unit.find(line) != std::string::npos);
  }
  CHECK(std::filesystem::read_symlink(node.root / "etc/systemd/system/multi-user.target.wants/cairn-web.service") ==
        "../cairn-web.service");
  CHECK(node.calls() == std::vector<std::string>{"reload", "start cairn-web.service"});
  CHECK(r.output.find("cairn-web.service: active") != std::string::npos);
  CHECK(node.leftovers().empty());
}

TEST_CASE("under the agent unit's UMask=0077 the service's tree is still 0755: its dynamic user must reach it") {
  Node node;
  const mode_t before = ::umask(077);
  auto r = node.install(good_tar());
  ::umask(before);
  CAPTURE(r.error);
  REQUIRE(r.outcome == "succeeded");
  const auto mode = [](const std::filesystem::path& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
  };
  const auto tree = node.services() / "web";
  CHECK(mode(node.services()) == 0755);
  CHECK(mode(tree) == 0755);
  CHECK(mode(tree / "bin") == 0755);
  CHECK(mode(tree / "conf") == 0755);
  CHECK(mode(tree / "bin/web") == 0755);
  CHECK(mode(tree / "conf/app.conf") == 0644);
}

TEST_CASE("replacing an installed service stops the old one first and swaps the whole tree") {
  Node node;
  REQUIRE(node.install(good_tar("v1")).ok());
  auto v2 = tar_entry("bin/web", '0', "#!/bin/sh\n", "", 0755) + tar_entry("conf/new.conf", '0', "v2\n") + tar_end();
  auto r = node.install(v2);
  REQUIRE(r.ok());
  CHECK(node.calls() == std::vector<std::string>{"reload", "start cairn-web.service", "stop cairn-web.service", "reload",
                                                 "start cairn-web.service"});
  CHECK(test::slurp(node.services() / "web/conf/new.conf") == "v2\n");
  CHECK_FALSE(std::filesystem::exists(node.services() / "web/conf/app.conf"));  // no mix of versions
  CHECK(node.leftovers().empty());
}

TEST_CASE("hostile archives are refused as invalid_args and nothing is installed or stopped") {
  struct Case {
    const char* what;
    std::string tar;
    const char* expect;  // in the error
  };
  const std::string web = tar_entry("bin/web", '0', "#!/bin/sh\n", "", 0755);
  const Case cases[] = {
      {"dot-dot path", web + tar_entry("../evil", '0', "x") + tar_end(), "'..' in the path"},
      {"dot-dot inside a path", web + tar_entry("conf/../../evil", '0', "x") + tar_end(), "'..' in the path"},
      {"absolute path", web + tar_entry("/etc/cron.d/evil", '0', "x") + tar_end(), "absolute path"},
      {"symlink to an absolute path", web + tar_entry("etc", '2', "", "/etc") + tar_end(), "symlink to the absolute path"},
      {"symlink out by dot-dot", web + tar_entry("up", '2', "", "../../..") + tar_end(), "leads out"},
      {"symlink out through another symlink",
       web + tar_entry("d/", '5', "", "", 0755) + tar_entry("e", '2', "", "d/p/..") + tar_entry("d/p", '2', "", "..") + tar_end(), "'e': symlink leads out"},
      {"a file written through a symlink", web + tar_entry("l", '2', "", "bin") + tar_entry("l/x", '0', "x") + tar_end(), "not a directory"},
      {"hard link out", web + tar_entry("h", '1', "", "../../etc/shadow") + tar_end(), "hard link"},
      {"character device", web + tar_entry("null", '3') + tar_end(), "device, FIFO"},
      {"FIFO", web + tar_entry("fifo", '6') + tar_end(), "device, FIFO"},
      {"dangling symlink", web + tar_entry("gone", '2', "", "nothing-here") + tar_end(), "dangling"},
      {"not an archive", std::string(4096, 'z'), "Unrecognized archive format"},
      {"exec missing from the archive", tar_entry("conf/x", '0', "x") + tar_end(), "not an executable file"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    Node node;
    auto r = node.install(c.tar);
    CHECK(r.outcome == "failed");
    CHECK(r.reason == FailureReason::invalid_args);
    CHECK_FALSE(r.error.empty());
    CHECK(r.error.find(c.expect) != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(node.services() / "web"));
    CHECK_FALSE(std::filesystem::exists(node.unit_file()));
    CHECK(node.calls().empty());
    CHECK(node.leftovers().empty());
    CHECK_FALSE(std::filesystem::exists(node.dir.path() / "evil"));
  }
}

TEST_CASE("a failed replacement leaves the running version untouched") {
  Node node;
  REQUIRE(node.install(good_tar("v1")).ok());
  auto r = node.install(tar_entry("bin/web", '0', "#!/bin/sh\n", "", 0755) + tar_entry("../x", '0', "x") + tar_end());
  CHECK(r.reason == FailureReason::invalid_args);
  CHECK(test::slurp(node.services() / "web/conf/app.conf") == "v1\n");
  CHECK(node.calls() == std::vector<std::string>{"reload", "start cairn-web.service"});  // never stopped
}

TEST_CASE("an archive bomb is refused by the size, entry and ratio caps") {
  test::TempDir dir;
  SUBCASE("total size") {
    const auto path = dir.path() / "big.tar";
    REQUIRE(write_file_atomic(path, tar_entry("blob", '0', std::string(3 << 20, 'a')) + tar_end()));
    auto r = extract_archive(path, dir.path() / "out", {.max_entries = 100, .max_total_bytes = 2 << 20, .max_ratio = 1000});
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("more than") != std::string::npos);
  }
  SUBCASE("entries") {
    std::string tar;
    for (int i = 0; i < 11; ++i) tar += tar_entry("f" + std::to_string(i), '0', "x");
    const auto path = dir.path() / "many.tar";
    REQUIRE(write_file_atomic(path, tar + tar_end()));
    auto r = extract_archive(path, dir.path() / "out", {.max_entries = 10});
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("entries") != std::string::npos);
  }
  SUBCASE("expansion ratio of a compressed archive") {
    const auto path = dir.path() / "zeros.tar";
    REQUIRE(write_file_atomic(path, tar_entry("zeros", '0', std::string(16 << 20, '\0')) + tar_end()));
    std::string gzip;
    for (const char* p : {"/usr/bin/gzip", "/bin/gzip"}) {
      if (gzip.empty() && ::access(p, X_OK) == 0) gzip = p;
    }
    if (gzip.empty()) CAIRN_SKIP("gzip is not installed (/usr/bin/gzip): the ratio cap needs a compressed archive");
    auto gz = test::run_capture({gzip, "-9", path.string()}, dir.path());
    REQUIRE_MESSAGE(gz.exit_code == 0, gz.err);
    auto r = extract_archive(dir.path() / "zeros.tar.gz", dir.path() / "out");
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("expands more than") != std::string::npos);
  }
}

TEST_CASE("service names with odd characters and malformed install args are refused") {
  const std::string tar = good_tar();
  const char* names[] = {"", "web;rm -rf /", "../web", ".hidden", "-web", "a b", "web\n", "we/b", "a..b",
                         "x23456789012345678901234567890123456789012345678901234567890123456"};
  for (const char* name : names) {
    CAPTURE(name);
    Node node;
    auto r = node.run("service.install", {{"name", name}, {"archive_base64", base64(tar)}, {"exec", {"bin/web"}}});
    CHECK(r.reason == FailureReason::invalid_args);
    CHECK(node.calls().empty());
    CHECK(node.run("service.remove", {{"name", name}}).reason == FailureReason::invalid_args);
  }
  const Json bad_args[] = {
      {{"name", "web"}, {"exec", {"bin/web"}}},                                                       // no archive
      {{"name", "web"}, {"archive_base64", "!!!!"}, {"exec", {"bin/web"}}},                           // not base64
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"/bin/sh"}}},                      // exec outside
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"../bin/sh"}}},
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web", "a\nExecStartPre=/evil"}}},
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web"}}, {"cpu_quota", "50"}},
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web"}}, {"memory_max", "1G\nUser=root"}},
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web"}}, {"user", "root"}},  // needs dynamic_user false
      {{"name", "web"}, {"archive_base64", base64(tar)}, {"exec", {"bin/web"}}, {"env", {{"A B", "x"}}}},
  };
  for (const auto& args : bad_args) {
    CAPTURE(dump_json(args));
    Node node;
    auto r = node.run("service.install", args);
    CHECK(r.reason == FailureReason::invalid_args);
    CHECK(node.calls().empty());
  }
}

TEST_CASE("a root service is refused unless the node's own configuration allows it") {
  const auto tar = good_tar();
  for (const Json& extra : {Json{{"dynamic_user", false}}, Json{{"dynamic_user", false}, {"user", "root"}}}) {
    CAPTURE(dump_json(extra));
    Node node;
    auto r = node.install(tar, extra);
    CHECK(r.reason == FailureReason::invalid_args);
    CHECK(r.error.find("would run as root") != std::string::npos);
    CHECK(r.error.find("allow_root_services") != std::string::npos);  // the way to allow it
    CHECK(node.calls().empty());
    CHECK_FALSE(std::filesystem::exists(node.unit_file()));

    Node allowing;
    allowing.settings.allow_root_services = true;
    CHECK(allowing.install(tar, extra).outcome == "succeeded");
    CHECK(std::filesystem::exists(allowing.unit_file()));
  }
  Node named;  // a named user other than root needs no permission
  CHECK(named.install(tar, {{"dynamic_user", false}, {"user", "web"}}).outcome == "succeeded");
  CHECK(read_file(named.unit_file(), 1 << 16).value_or("").find("User=web\n") != std::string::npos);
}

TEST_CASE("a unit that fails to start is reported exit_nonzero with where to look") {
  Node node;
  node.systemd->state_after_start = "failed";
  auto r = node.install(good_tar());
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::exit_nonzero);
  CHECK(r.error.find("journalctl -u cairn-web.service") != std::string::npos);
}

TEST_CASE("a replacement that fails to start gives way to the version it replaced") {
  Node node;
  REQUIRE(node.install(good_tar("v1")).ok());
  const auto unit_v1 = test::slurp(node.unit_file());
  node.systemd->state_after_start = "failed";
  auto r = node.install(tar_entry("bin/web", '0', "#!/bin/sh\nexit 1\n", "", 0755) + tar_end(), {{"memory_max", "1G"}});
  CHECK(r.reason == FailureReason::exit_nonzero);
  CHECK(r.error.find("previous version was put back and started") != std::string::npos);
  CHECK(test::slurp(node.services() / "web/conf/app.conf") == "v1\n");  // the old tree, whole
  CHECK(test::slurp(node.unit_file()) == unit_v1);
  CHECK(node.calls() == std::vector<std::string>{"reload", "start cairn-web.service", "stop cairn-web.service", "reload",
                                                 "start cairn-web.service", "stop cairn-web.service", "reload",
                                                 "start cairn-web.service"});
  CHECK(node.leftovers().empty());
}

TEST_CASE("without systemd the install fails before touching an installed service") {
  Node node;
  node.systemd->reachable = false;
  auto r = node.install(good_tar());
  CHECK(r.reason == FailureReason::internal);
  CHECK(r.error.find("system bus") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(node.services() / "web"));
  CHECK(node.leftovers().empty());
}

TEST_CASE("service.remove stops the unit and removes unit, link and tree; again is a no-op") {
  Node node;
  REQUIRE(node.install(good_tar()).ok());
  auto r = node.run("service.remove", {{"name", "web"}});
  REQUIRE(r.ok());
  CHECK_FALSE(std::filesystem::exists(node.services() / "web"));
  CHECK_FALSE(std::filesystem::exists(node.unit_file()));
  CHECK_FALSE(std::filesystem::exists(std::filesystem::symlink_status(
      node.root / "etc/systemd/system/multi-user.target.wants/cairn-web.service")));
  CHECK(node.calls() == std::vector<std::string>{"reload", "start cairn-web.service", "stop cairn-web.service", "reload"});
  CHECK(node.leftovers().empty());
  r = node.run("service.remove", {{"name", "web"}});
  REQUIRE(r.ok());
  CHECK(r.output.find("not installed") != std::string::npos);
}

TEST_CASE("service.install against the real systemd") {
  std::string pid1 = test::slurp("/proc/1/comm");
  if (!pid1.empty() && pid1.back() == '\n') pid1.pop_back();
  if (pid1 != "systemd") CAIRN_SKIP("PID 1 is '" + pid1 + "', not systemd: the sd-bus path is tested against the fake here");
  if (::geteuid() != 0) CAIRN_SKIP("installing a unit needs root");
  Root root("/");
  KindSettings settings;  // connect_systemd
  const TaskContext ctx{.root = root, .clock = SystemClock::instance()};
  test::TempDir dir;
  const auto tar = dir.path() / "svc.tar";
  REQUIRE(write_file_atomic(tar, tar_entry("bin/run", '0', "#!/bin/sh\nexec sleep 600\n", "", 0755) + tar_end()));
  auto r = run_task("service.install",
                    {{"name", "cairn-test-sleeper"}, {"archive_path", tar.string()}, {"exec", {"bin/run"}},
                     {"memory_max", "64M"}, {"cpu_quota", "10%"}},
                    settings, ctx);
  CAPTURE(r.error);
  CHECK(r.ok());
  auto removed = run_task("service.remove", {{"name", "cairn-test-sleeper"}}, settings, ctx);
  CHECK(removed.ok());
}
