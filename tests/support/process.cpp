// posix_spawn-based child processes for integration tests.
#include "tests/support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

extern char** environ;

namespace cairn::test {
namespace {

struct FileActions {
  posix_spawn_file_actions_t actions{};
  FileActions() { posix_spawn_file_actions_init(&actions); }
  ~FileActions() { posix_spawn_file_actions_destroy(&actions); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
};

}  // namespace

Result<Process> Process::spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                               const std::filesystem::path& log_path) {
  return spawn(argv, env, log_path, log_path);
}

Result<Process> Process::spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                               const std::filesystem::path& stdout_path,
                               const std::filesystem::path& stderr_path) {
  if (argv.empty()) return fail(Errc::usage, "Process::spawn: empty argv");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const auto& extra : env) {
    const auto key = extra.substr(0, extra.find('=') + 1);
    std::erase_if(env_strings, [&](const std::string& s) { return s.starts_with(key); });
    env_strings.push_back(extra);
  }
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  FileActions fa;
  constexpr int kFlags = O_WRONLY | O_CREAT | O_APPEND;
  if (!stdout_path.empty()) {
    posix_spawn_file_actions_addopen(&fa.actions, STDOUT_FILENO, stdout_path.c_str(), kFlags, 0644);
  }
  if (!stderr_path.empty()) {
    if (stderr_path == stdout_path) {
      posix_spawn_file_actions_adddup2(&fa.actions, STDOUT_FILENO, STDERR_FILENO);
    } else {
      posix_spawn_file_actions_addopen(&fa.actions, STDERR_FILENO, stderr_path.c_str(), kFlags, 0644);
    }
  }
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, args[0], &fa.actions, nullptr, args.data(), envp.data());
  if (rc != 0) {
    return fail(Errc::io, "spawn " + argv[0] + ": " + std::strerror(rc), "build the binary first");
  }
  return Process(pid);
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), exit_code_(other.exit_code_) {}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && !exit_code_) {
      ::kill(pid_, SIGKILL);
      reap(true);
    }
    pid_ = std::exchange(other.pid_, -1);
    exit_code_ = other.exit_code_;
  }
  return *this;
}

Process::~Process() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
}

bool Process::reap(bool block) {
  if (exit_code_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

bool Process::running() { return pid_ > 0 && !reap(false); }

void Process::kill(int sig) {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, sig);
}

std::optional<int> Process::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  wait_for([&] { return reap(false); }, timeout, std::chrono::milliseconds(10));
  return exit_code_;
}

bool wait_for(const std::function<bool()>& predicate, std::chrono::milliseconds timeout,
              std::chrono::milliseconds interval) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (predicate()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

RunResult run_capture(const std::vector<std::string>& argv, const std::filesystem::path& scratch_dir,
                      std::chrono::milliseconds timeout, const std::vector<std::string>& env) {
  static std::atomic<int> counter{0};
  const int n = counter.fetch_add(1);
  const auto out_path = scratch_dir / ("run-" + std::to_string(::getpid()) + "-" + std::to_string(n) + ".out");
  const auto err_path = scratch_dir / ("run-" + std::to_string(::getpid()) + "-" + std::to_string(n) + ".err");
  RunResult result;
  auto process = Process::spawn(argv, env, out_path, err_path);
  if (!process) {
    result.err = process.error().message;
    return result;
  }
  if (auto code = process->wait_exit(timeout)) {
    result.exit_code = *code;
  } else {
    process->kill(SIGKILL);
    process->wait_exit(std::chrono::seconds(5));
  }
  result.out = slurp(out_path);
  result.err = slurp(err_path);
  std::error_code ec;
  std::filesystem::remove(out_path, ec);
  std::filesystem::remove(err_path, ec);
  return result;
}

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim_output(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string which(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/bin:/bin";
  while (!dirs.empty()) {
    const auto colon = dirs.find(':');
    const auto candidate = std::filesystem::path(dirs.substr(0, colon)) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return {};
}

}  // namespace cairn::test
