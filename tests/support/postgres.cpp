// A real PostgreSQL for tests: fork/exec of initdb and postgres under an unprivileged uid.
#include "tests/support/postgres.hpp"

#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "tests/support/process.hpp"

extern char** environ;

namespace cairn::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* kBinDir = "/usr/lib/postgresql/15/bin";
constexpr const char* kSuperuser = "cairn";

// fork + (drop to uid/gid) + exec; stdout and stderr appended to log. The child dies with
// the test process (PDEATHSIG), so a crashed test leaves no server behind.
pid_t spawn_as(const std::vector<std::string>& argv, uid_t uid, gid_t gid, const std::filesystem::path& log,
               const std::filesystem::path& cwd) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // The environment is built here: between fork and exec only async-signal-safe calls.
  std::vector<std::string> env_strings = {"LC_ALL=C"};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with("LC_ALL=")) continue;
    env_strings.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  // child: only async-signal-safe calls from here on
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
  }
  // Each failure before exec says which step failed (write(2) is async-signal-safe), so the
  // parent's error names it instead of showing an empty log.
  const auto die = [](const char* what) {
    [[maybe_unused]] const auto n = ::write(STDERR_FILENO, what, std::strlen(what));
    ::_exit(126);
  };
  if (::getuid() != uid) {
    if (::setgroups(0, nullptr) != 0) die("cairn test fixture: setgroups failed before exec\n");
    if (::setgid(gid) != 0) die("cairn test fixture: setgid to the postgres group failed before exec\n");
    if (::setuid(uid) != 0) die("cairn test fixture: setuid to the postgres user failed before exec\n");
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  if (::chdir(cwd.c_str()) != 0) die("cairn test fixture: chdir failed before exec\n");
  ::execve(args[0], args.data(), envp.data());
  die("cairn test fixture: execve failed\n");
  return -1;  // not reached: die() exits
}

std::optional<int> wait_pid(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// The first directory on the way to `dir` (itself included) that uid/gid may not search, or
// nothing. A chroot whose own root is 0700 (a mktemp -d made into a root) hides every path
// from the postgres user, so its server could never reach its data directory.
std::optional<std::filesystem::path> unsearchable_ancestor(const std::filesystem::path& dir, uid_t uid, gid_t gid) {
  std::filesystem::path walk = "/";
  std::vector<std::filesystem::path> chain = {walk};
  for (const auto& part : std::filesystem::absolute(dir).relative_path()) chain.push_back(walk /= part);
  for (const auto& p : chain) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return p;
    const mode_t need = st.st_uid == uid ? S_IXUSR : st.st_gid == gid ? S_IXGRP : S_IXOTH;
    if ((st.st_mode & need) == 0) return p;
  }
  return std::nullopt;
}

}  // namespace

std::filesystem::path PostgresServer::bin_dir() {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(kBinDir) / "postgres", ec)) return kBinDir;
  return {};
}

std::optional<std::string> PostgresServer::unavailable_reason() {
  if (bin_dir().empty()) {
    return std::string("PostgreSQL 15 is not installed (") + kBinDir +
           "/postgres missing); install the Debian package 'postgresql' (tools/install-deps)";
  }
  if (::getuid() == 0) {
    const passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      return std::string("running as root and no 'postgres' user to run the server as (PostgreSQL refuses root)");
    }
    std::error_code ec;
    const auto tmp = std::filesystem::temp_directory_path(ec);
    if (auto blocked = unsearchable_ancestor(ec ? std::filesystem::path("/tmp") : tmp, pw->pw_uid, pw->pw_gid)) {
      return "the 'postgres' user cannot search " + blocked->string() +
             " (its mode hides every data directory from the server, which refuses to run as root); "
             "this happens in a chroot whose root directory is 0700: chmod 0755 it";
    }
  }
  return std::nullopt;
}

Result<std::unique_ptr<PostgresServer>> PostgresServer::start() {
  if (auto why = unavailable_reason()) return fail(Errc::unavailable, *why);
  std::unique_ptr<PostgresServer> pg(new PostgresServer());
  pg->uid_ = ::getuid();
  pg->gid_ = ::getgid();
  if (pg->uid_ == 0) {
    const passwd* pw = ::getpwnam("postgres");
    pg->uid_ = pw->pw_uid;
    pg->gid_ = pw->pw_gid;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "cairn-pg-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return fail(Errc::io, "mkdtemp " + tmpl + ": " + std::strerror(errno));
  pg->dir_ = tmpl;
  if (::chown(pg->dir_.c_str(), pg->uid_, pg->gid_) != 0) {
    return fail(Errc::io, "chown " + pg->dir_.string() + ": " + std::strerror(errno));
  }
  const auto bin = bin_dir();
  const auto log = pg->dir_ / "initdb.log";
  const pid_t init = spawn_as({(bin / "initdb").string(), "-D", (pg->dir_ / "data").string(), "-U", kSuperuser,
                               "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"},
                              pg->uid_, pg->gid_, log, pg->dir_);
  const auto rc = wait_pid(init, 120s);
  if (!rc || *rc != 0) {
    if (!rc) ::kill(init, SIGKILL), wait_pid(init, 5s);
    return fail(Errc::io, "initdb failed (exit " + (rc ? std::to_string(*rc) : std::string("timeout")) + "); log:\n" + slurp(log));
  }
  // A port taken between probing and binding: try another.
  for (int attempt = 0; attempt < 3; ++attempt) {
    pg->port_ = free_loopback_port();
    if (auto ok = pg->launch(); ok) return pg;
    else if (attempt == 2) return fail(ok.error());
  }
  return fail(Errc::internal, "unreachable");
}

Status PostgresServer::launch() {
  const auto log = dir_ / "server.log";
  const auto pidfile = dir_ / "data" / "postmaster.pid";
  std::error_code ec;
  std::filesystem::remove(pidfile, ec);
  pid_ = spawn_as({(bin_dir() / "postgres").string(), "-D", (dir_ / "data").string(), "-p", std::to_string(port_),
                   "-k", dir_.string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c",
                   "synchronous_commit=on", "-c", "max_connections=300", "-c", "shared_buffers=128MB"},
                  uid_, gid_, log, dir_);
  // postmaster.pid's 8th line turns "ready" once connections are accepted.
  const bool ready = wait_for(
      [&] {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          return true;
        }
        const std::string text = slurp(pidfile);
        return text.find("\nready") != std::string::npos;
      },
      60s);
  if (!ready || pid_ < 0) {
    stop();
    return fail(Errc::io, "postgres did not become ready on 127.0.0.1:" + std::to_string(port_) + "; log:\n" +
                              slurp(log));
  }
  return {};
}

void PostgresServer::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGINT);  // fast shutdown: roll back sessions, checkpoint, exit
  if (!wait_pid(pid_, 20s)) {
    ::kill(pid_, SIGKILL);
    wait_pid(pid_, 5s);
  }
  pid_ = -1;
}

void PostgresServer::kill_hard() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  wait_pid(pid_, 5s);
  pid_ = -1;
}

Status PostgresServer::restart() {
  stop();
  return launch();
}

PostgresServer::~PostgresServer() {
  stop();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

std::string PostgresServer::url(const std::string& database) const {
  return std::string("postgresql://") + kSuperuser + "@127.0.0.1:" + std::to_string(port_) + "/" + database;
}

Result<std::string> PostgresServer::psql(const std::string& database, const std::string& sql) {
  std::vector<std::string> argv = {(bin_dir() / "psql").string(), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"};
  if (database.starts_with("postgresql://")) {
    argv.insert(argv.end(), {"-d", database});  // a URL (with its search_path) says it all
  } else {
    argv.insert(argv.end(), {"-h", "127.0.0.1", "-p", std::to_string(port_), "-U", kSuperuser, "-d", database});
  }
  argv.insert(argv.end(), {"-c", sql});
  const auto r = run_capture(argv, dir_, std::chrono::seconds(60));
  if (r.exit_code != 0) return fail(Errc::io, "psql '" + sql + "': " + r.err);
  return r.out;
}

Result<std::string> PostgresServer::create_database(const std::string& name) {
  if (auto ok = psql("postgres", "CREATE DATABASE \"" + name + "\""); !ok) return fail(ok.error());
  return url(name);
}

PostgresServer* shared_postgres(std::string& why) {
  static std::unique_ptr<PostgresServer> server;
  static std::string error;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (auto reason = PostgresServer::unavailable_reason()) {
      error = *reason;
    } else if (auto started = PostgresServer::start(); started) {
      server = std::move(*started);
    } else {
      error = started.error().message;
    }
  }
  why = error;
  return server.get();
}

Result<std::string> fresh_postgres_database(PostgresServer& server) {
  // A schema per case, not a database: CREATE DATABASE copies and syncs a template (seconds
  // on a busy disk with fsync on); a schema is a catalog row. The URL's search_path points
  // every unqualified name of the store at it.
  static int counter = 0;
  const std::string schema = "t" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
  if (auto ok = server.psql("postgres", "CREATE SCHEMA " + schema); !ok) return fail(ok.error());
  return server.url("postgres") + "?options=-c%20search_path%3D" + schema;
}

}  // namespace cairn::test
