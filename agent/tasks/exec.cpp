// The `exec` kind: runs argv in its own session (setsid), so a timeout or a cancel reaches
// the whole process group: SIGTERM, then SIGKILL after the grace. stdout and stderr share one
// pipe read by this thread with poll(2) (pidfd for the exit, the cancel fd, the deadline):
// no thread per stream, and only the last kMaxTaskOutputBytes are held, however much the
// process writes. Arguments: {"argv": [..], "env": {"K": "V"}, "cwd": "/dir"}.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "agent/tasks/exec.hpp"
#include "common/fd.hpp"

namespace cairn::agent::tasks {
namespace {

using protocol::FailureReason;
using std::chrono::milliseconds;

constexpr std::size_t kMaxArgs = 4096;
constexpr std::size_t kMaxArgBytes = 256 * 1024;  // argv and env together
constexpr std::chrono::seconds kDefaultTimeout{3600};
// After the main process exits, what is left in the pipe is read for at most this long (a
// daemonized grandchild could hold it open forever).
constexpr milliseconds kDrainAfterExit{2000};
constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Keeps the last `cap` bytes written to it.
class TailBuffer {
 public:
  explicit TailBuffer(std::size_t cap) : cap_(cap) {}
  void append(const char* data, std::size_t n) {
    total_ += n;
    if (n >= cap_) {
      tail_.assign(data + (n - cap_), cap_);
      return;
    }
    if (tail_.size() + n > cap_) tail_.erase(0, tail_.size() + n - cap_);
    tail_.append(data, n);
  }
  [[nodiscard]] std::int64_t total() const { return static_cast<std::int64_t>(total_); }
  [[nodiscard]] bool truncated() const { return total_ > tail_.size(); }
  std::string take() { return std::move(tail_); }

 private:
  std::size_t cap_;
  std::size_t total_ = 0;
  std::string tail_;
};

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

// PATH lookup in the parent (execve in the child), with the task's PATH.
std::string resolve_program(const std::string& name, const std::string& path_var) {
  if (name.find('/') != std::string::npos) return name;
  std::size_t start = 0;
  while (start <= path_var.size()) {
    const auto end = std::min(path_var.find(':', start), path_var.size());
    std::string dir = path_var.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

struct Spawned {
  pid_t pid = -1;
  UniqueFd pidfd;
  UniqueFd out;  // read end: stdout and stderr of the process
};

// fork + setsid + execve. Between fork and exec the child only makes async-signal-safe calls
// (this process has threads). An execve failure comes back through a CLOEXEC pipe as errno.
Result<Spawned> spawn(const std::string& program, const std::vector<std::string>& argv,
                      const std::vector<std::string>& env, const std::string& cwd) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::vector<char*> cenv;
  for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);

  std::array<int, 2> out{};
  std::array<int, 2> err{};
  if (::pipe2(out.data(), O_CLOEXEC) != 0) return fail(Errc::io, std::string("exec: pipe: ") + std::strerror(errno));
  UniqueFd out_r(out[0]), out_w(out[1]);
  if (::pipe2(err.data(), O_CLOEXEC) != 0) return fail(Errc::io, std::string("exec: pipe: ") + std::strerror(errno));
  UniqueFd err_r(err[0]), err_w(err[1]);
  UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull) return fail(Errc::io, std::string("exec: /dev/null: ") + std::strerror(errno));

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return fail(Errc::temporary, std::string("exec: fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::setsid();
    // An agent killed with SIGKILL cannot stop its tasks: the kernel does, for the process it
    // started (the thread that forked it is the one waiting for it). Under systemd the unit's
    // cgroup takes the rest of the group.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the agent blocks SIGTERM for its signalfd
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(devnull.get(), 0);
    ::dup2(out_w.get(), 1);
    ::dup2(out_w.get(), 2);
    if (::chdir(cwd.c_str()) != 0) {
      const int e = errno;
      [[maybe_unused]] auto n = ::write(err_w.get(), &e, sizeof e);
      ::_exit(127);
    }
    ::execve(program.c_str(), cargv.data(), cenv.data());
    const int e = errno;
    [[maybe_unused]] auto n = ::write(err_w.get(), &e, sizeof e);
    ::_exit(127);
  }
  out_w.reset();
  err_w.reset();
  int child_errno = 0;
  ssize_t n;
  do n = ::read(err_r.get(), &child_errno, sizeof child_errno);
  while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof child_errno)) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return fail(child_errno == ENOENT || child_errno == EACCES || child_errno == ENOTDIR ? Errc::data : Errc::io,
                "exec " + program + " (in " + cwd + "): " + std::strerror(child_errno),
                "check the task's argv[0] and cwd on this node");
  }
  Spawned s;
  s.pid = pid;
  // glibc 2.36 declares pidfd_open without extern "C"; the syscall is the same.
  s.pidfd = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  s.out = std::move(out_r);
  ::fcntl(s.out.get(), F_SETFL, ::fcntl(s.out.get(), F_GETFL) | O_NONBLOCK);
  return s;
}

}  // namespace

Result<ExecArgs> parse_exec_args(const Json& args, const KindSettings& settings) {
  if (!args.is_object()) return fail(Errc::data, "exec args: not a JSON object", R"(send {"argv": ["cmd", ...]})");
  ExecArgs out;
  std::size_t bytes = 0;
  auto argv = args.find("argv");
  if (argv == args.end() || !argv->is_array() || argv->empty()) {
    return fail(Errc::data, "exec args: argv must be a non-empty array of strings", "e.g. {\"argv\": [\"uname\", \"-a\"]}");
  }
  if (argv->size() > kMaxArgs) return fail(Errc::data, "exec args: more than " + std::to_string(kMaxArgs) + " arguments");
  for (const auto& a : *argv) {
    if (!a.is_string()) return fail(Errc::data, "exec args: argv holds a non-string (" + dump_json(a).substr(0, 60) + ")");
    out.argv.push_back(a.get<std::string>());
    if (has_nul(out.argv.back())) return fail(Errc::data, "exec args: an argument holds a NUL byte");
    bytes += out.argv.back().size();
  }
  if (out.argv.front().empty()) return fail(Errc::data, "exec args: argv[0] is empty");
  if (auto env = args.find("env"); env != args.end() && !env->is_null()) {
    if (!env->is_object()) return fail(Errc::data, "exec args: env must be an object of strings");
    for (const auto& [k, v] : env->items()) {
      if (k.empty() || k.find('=') != std::string::npos || has_nul(k)) {
        return fail(Errc::data, "exec args: env name '" + k.substr(0, 60) + "' is not a variable name");
      }
      if (!v.is_string() || has_nul(v.get<std::string>())) return fail(Errc::data, "exec args: env " + k + " is not a string");
      out.env[k] = v.get<std::string>();
      bytes += k.size() + out.env[k].size();
    }
  }
  if (auto cwd = args.find("cwd"); cwd != args.end() && !cwd->is_null()) {
    if (!cwd->is_string() || cwd->get<std::string>().empty() || cwd->get<std::string>().front() != '/' ||
        has_nul(cwd->get<std::string>())) {
      return fail(Errc::data, "exec args: cwd must be an absolute path");
    }
    out.cwd = cwd->get<std::string>();
  }
  if (bytes > kMaxArgBytes) return fail(Errc::data, "exec args: argv and env exceed " + std::to_string(kMaxArgBytes) + " bytes");
  if (!settings.exec_allowlist.empty() &&
      std::find(settings.exec_allowlist.begin(), settings.exec_allowlist.end(), out.argv.front()) ==
          settings.exec_allowlist.end()) {
    return fail(Errc::refused, "exec: '" + out.argv.front() + "' is not in this node's exec allowlist",
                "add it to tasks.exec_allowlist in the agent's config, or run an allowed command");
  }
  return out;
}

Status ExecKind::validate(const Json& args) const {
  auto parsed = parse_exec_args(args, settings_);
  if (!parsed) return fail(parsed.error());
  return {};
}

TaskResult ExecKind::run(const Json& args, const TaskContext& ctx) {
  auto parsed = parse_exec_args(args, settings_);
  if (!parsed) return failed(FailureReason::invalid_args, parsed.error().message);
  std::map<std::string, std::string> env_map{{"PATH", kDefaultPath}, {"HOME", "/"}, {"LANG", "C.UTF-8"}};
  const bool allowlisted = !settings_.exec_allowlist.empty();
  for (const auto& [k, v] : parsed->env) {
    // Under an allowlist the task may not choose which binary a name resolves to, nor inject
    // code into it: its PATH and the dynamic loader's variables are refused.
    if (allowlisted && (k == "PATH" || k.starts_with("LD_"))) {
      return failed(FailureReason::invalid_args, "exec: env " + k + " is not allowed on a node with an exec allowlist");
    }
    env_map[k] = v;
  }
  std::vector<std::string> env;
  for (const auto& [k, v] : env_map) env.push_back(k + "=" + v);
  const std::string program = resolve_program(parsed->argv.front(), env_map["PATH"]);
  if (program.empty()) {
    return failed(FailureReason::invalid_args, "exec: '" + parsed->argv.front() + "' not found in PATH " + env_map["PATH"]);
  }
  const std::string cwd = (ctx.root / parsed->cwd).string();

  auto child = spawn(program, parsed->argv, env, cwd);
  if (!child) {
    return failed(child.error().code == Errc::data ? FailureReason::invalid_args : FailureReason::internal,
                  child.error().message);
  }
  const pid_t pid = child->pid;
  const auto start = ctx.clock.monotonic();
  const auto timeout = ctx.timeout.count() > 0 ? ctx.timeout : kDefaultTimeout;
  const auto deadline = start + timeout;
  std::optional<Clock::MonoTime> kill_at;   // SIGKILL of the group when set and passed
  std::optional<Clock::MonoTime> drain_until;
  bool timed_out = false, cancelled = false, exited = false, out_open = true;
  int status = 0;
  TailBuffer tail(protocol::kMaxTaskOutputBytes);
  std::vector<char> chunk(64 * 1024);

  const auto signal_group = [&](int sig) { ::kill(-pid, sig); };
  const auto terminate = [&] {
    if (kill_at) return;
    signal_group(SIGTERM);
    kill_at = ctx.clock.monotonic() + ctx.kill_grace;
  };
  const auto on_exit = [&](int st) {
    status = st;
    exited = true;
    drain_until = ctx.clock.monotonic() + kDrainAfterExit;
  };

  while (!exited || (out_open && ctx.clock.monotonic() < *drain_until)) {
    const auto now = ctx.clock.monotonic();
    if (!exited && !timed_out && !cancelled && now >= deadline) {
      timed_out = true;
      terminate();
    }
    if (!exited && kill_at && now >= *kill_at) signal_group(SIGKILL);
    std::vector<pollfd> fds;
    if (out_open) fds.push_back({child->out.get(), POLLIN, 0});
    const bool watch_pid = !exited && child->pidfd;
    if (watch_pid) fds.push_back({child->pidfd.get(), POLLIN, 0});
    const bool watch_cancel = !exited && !cancelled && ctx.cancel_fd >= 0;
    if (watch_cancel) fds.push_back({ctx.cancel_fd, POLLIN, 0});
    auto next = now + milliseconds(child->pidfd ? 1000 : 50);  // without a pidfd: poll waitpid
    if (!exited && !timed_out && !cancelled) next = std::min(next, deadline);
    if (!exited && kill_at) next = std::min(next, *kill_at);
    if (exited) next = std::min(next, *drain_until);
    const auto wait_ms = std::max<long long>(0, std::chrono::ceil<milliseconds>(next - now).count());
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait_ms));
    if (n < 0 && errno != EINTR) break;
    std::size_t i = 0;
    if (out_open) {
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        for (;;) {
          const ssize_t got = ::read(child->out.get(), chunk.data(), chunk.size());
          if (got > 0) {
            tail.append(chunk.data(), static_cast<std::size_t>(got));
            continue;
          }
          if (got == 0) out_open = false;
          else if (errno != EAGAIN && errno != EINTR) out_open = false;
          break;
        }
      }
      ++i;
    }
    if (watch_pid) ++i;
    if (watch_cancel) {
      if (fds[i].revents & POLLIN) {
        cancelled = true;
        terminate();
      }
    }
    if (!exited) {
      // The main process ended: whatever it left in its group goes too (before reaping, so
      // the group id cannot have been reused), then it is reaped.
      siginfo_t info{};
      if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) {
        signal_group(SIGKILL);
        int st = 0;
        ::waitpid(pid, &st, 0);
        on_exit(st);
      }
    }
  }
  if (!exited) {  // poll failed: do not leave the group behind
    signal_group(SIGKILL);
    ::waitpid(pid, &status, 0);
  }

  TaskResult r;
  r.output_bytes = tail.total();
  r.output_truncated = tail.truncated();
  r.output = tail.take();
  r.duration_ms = std::chrono::duration_cast<milliseconds>(ctx.clock.monotonic() - start).count();
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (cancelled) {
    r.outcome = "cancelled";
    r.error = "cancelled: the process group was stopped";
  } else if (timed_out) {
    r.outcome = "failed";
    r.reason = FailureReason::timeout;
    r.error = "timed out after " + std::to_string(timeout.count()) + " s: the process group was stopped";
  } else if (WIFSIGNALED(status)) {
    r.outcome = "failed";
    r.reason = FailureReason::killed;
    r.error = std::string("killed by signal ") + std::to_string(WTERMSIG(status)) + " (" + ::strsignal(WTERMSIG(status)) + ")";
  } else if (r.exit_code != 0) {
    r.outcome = "failed";
    r.reason = FailureReason::exit_nonzero;
    r.error = "exited with status " + std::to_string(*r.exit_code);
  }
  return r;
}

}  // namespace cairn::agent::tasks
