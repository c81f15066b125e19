// Child processes for integration tests: spawn a real binary with its output in a file,
// wait on conditions with a deadline (never fixed sleeps), signal it, reap it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace cairn::test {

class Process {
 public:
  // argv[0] is the program path. env: extra "KEY=VALUE" entries on top of this process's
  // environment. stdout and stderr both go to log_path (appended), or are inherited if empty.
  static Result<Process> spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                               const std::filesystem::path& log_path = {});
  // Same with stdout and stderr in separate files (empty path: inherited).
  static Result<Process> spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                               const std::filesystem::path& stdout_path, const std::filesystem::path& stderr_path);

  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // Still running: SIGKILL and reap, so no test leaves a process behind.
  ~Process();

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running();
  void kill(int sig);
  // Exit code (or 128 + signal number) once it exits; nullopt if still running at the deadline.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);

 private:
  explicit Process(pid_t pid) : pid_(pid) {}
  bool reap(bool block);
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// Polls predicate every `interval` until it returns true (true) or the deadline passes (false).
bool wait_for(const std::function<bool()>& predicate, std::chrono::milliseconds timeout,
              std::chrono::milliseconds interval = std::chrono::milliseconds(20));

struct RunResult {
  int exit_code = -1;  // -1: did not finish before the timeout (it was killed)
  std::string out;
  std::string err;
};
// Runs a command to completion with stdout and stderr captured (scratch files in scratch_dir).
RunResult run_capture(const std::vector<std::string>& argv, const std::filesystem::path& scratch_dir,
                      std::chrono::milliseconds timeout = std::chrono::seconds(30),
                      const std::vector<std::string>& env = {});

// The whole content of a file, or "" if it cannot be read (logs that a test greps).
std::string slurp(const std::filesystem::path& path);

// A command's output without its trailing newlines and spaces (a token, a count, an id).
std::string trim_output(std::string s);

// The program's absolute path on PATH (posix_spawn does not search), or "" when absent.
std::string which(const std::string& name);

}  // namespace cairn::test
