// The 2 s bound holds for a configured hostname too: name resolution is inside the
// source's budget even when the resolver never answers (glibc would wait 5 s per try).
// The test makes such a resolver for itself: in a child process with its own user, mount
// and network namespaces, /etc/resolv.conf names 127.0.0.1, where a UDP socket takes the
// queries and never answers. Where namespaces are not allowed, it is skipped.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <string>

#include "common/json.hpp"
#include "tests/support/skip.hpp"
#include "tests/unit/identity/fake_host.hpp"
#include "tests/unit/identity/helpers.hpp"

namespace {

constexpr int kSkip = 77;

bool write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  return static_cast<bool>(out.flush());
}

// In the child: a private network namespace with lo up, a resolver on 127.0.0.1:53 that
// swallows every query, and /etc/resolv.conf pointing at it. Returns "" or why not.
std::string make_dead_resolver(const std::string& scratch, int& dns_socket) {
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  if (::unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0) {
    return std::string("unshare(user, mount, net): ") + std::strerror(errno);
  }
  if (!write_text("/proc/self/setgroups", "deny") ||
      !write_text("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") ||
      !write_text("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1")) {
    return "cannot write the user namespace's id maps";
  }
  if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return std::string("make / private: ") + std::strerror(errno);
  }
  const std::string conf = scratch + "/resolv.conf";
  if (!write_text(conf, "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")) {
    return "cannot write " + conf;
  }
  if (::mount(conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) {
    return std::string("bind-mount /etc/resolv.conf: ") + std::strerror(errno);
  }
  // Only files and DNS: an NSS module such as systemd-resolved's would answer on its own.
  const std::string nss = scratch + "/nsswitch.conf";
  if (!write_text(nss, "hosts: files dns\n") ||
      ::mount(nss.c_str(), "/etc/nsswitch.conf", nullptr, MS_BIND, nullptr) != 0) {
    return std::string("bind-mount /etc/nsswitch.conf: ") + std::strerror(errno);
  }
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (s < 0 || ::ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return "cannot read lo's flags";
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) return std::string("lo up: ") + std::strerror(errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(53);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return std::string("bind 127.0.0.1:53: ") + std::strerror(errno);
  }
  dns_socket = s;  // bound and never read: every query goes unanswered
  return {};
}

// The child's report on the pipe: {"skip": why} or {"ms": elapsed, "reason": aws's reason}.
[[noreturn]] void child(int out_fd, const std::string& scratch, cairn::identity::Config config) {
  int dns_socket = -1;
  const auto report = [&](const cairn::Json& j, int code) {
    const auto text = cairn::dump_json(j);
    (void)!::write(out_fd, text.data(), text.size());
    ::_exit(code);
  };
  if (auto why = make_dead_resolver(scratch, dns_socket); !why.empty()) {
    report({{"skip", why}}, kSkip);
  }
  config.forced_clouds = {"aws"};
  config.base_urls["aws"] = "http://metadata.cairn.test:8080";  // RFC 6761: never a real name
  const auto start = std::chrono::steady_clock::now();
  auto d = cairn::test::run_cascade(config);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - start).count();
  std::string reason;
  for (const auto& a : d.attempts) {
    if (a.source == "aws") reason = a.reason;
  }
  report({{"ms", ms}, {"reason", reason}, {"source", d.identity ? d.identity->source : ""}}, 0);
  ::_exit(1);  // not reached: report exits
}

}  // namespace

TEST_CASE("a metadata hostname whose resolver never answers cannot hold the cascade past 2 s") {
  cairn::test::TempDir scratch;
  cairn::test::FakeHost host;  // made here, so its directory is removed when the test ends
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    child(fds[1], scratch.path().string(), host.config());
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  auto j = cairn::parse_json(out, "child report");
  REQUIRE(j);
  if (WEXITSTATUS(status) == kSkip) CAIRN_SKIP("no dead resolver here: " + (*j)["skip"].get<std::string>());
  REQUIRE(WEXITSTATUS(status) == 0);
  CAPTURE(out);
  // Bounded by the source's connect timeout (250 ms), not glibc's 2 x 5 s per query.
  CHECK((*j)["ms"].get<long long>() < 2000);
  CHECK(cairn::test::contains((*j)["reason"].get<std::string>(), "Resolving timed out"));
  CHECK((*j)["source"] == "local");
}
