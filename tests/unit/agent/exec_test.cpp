// The exec kind on real processes: output, exit codes, env and cwd, timeouts that stop the
// whole process group, cancellation, the output cap, the allowlist and malformed arguments.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>

#include "agent/tasks/exec.hpp"
#include "agent/tasks/kind.hpp"
#include "common/fd.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::agent::tasks;
using protocol::FailureReason;
using namespace std::chrono;

namespace {

TaskResult run(const Json& args, seconds timeout = seconds(30), const KindSettings& settings = {},
               int cancel_fd = -1, milliseconds grace = milliseconds(300), const Root& root = Root("/")) {
  TaskContext ctx{.root = root, .clock = SystemClock::instance(), .timeout = timeout, .cancel_fd = cancel_fd,
                  .kill_grace = grace};
  return run_task("exec", args, settings, ctx);
}

// A process is gone when kill(0) fails or it is a zombie waiting for a reaper that is not us.
bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

// SIGKILL is delivered when the target is next scheduled, which on a loaded machine is not
// yet when kill() returns: wait for it (bounded), so the check is about the group being
// signalled, not about the scheduler.
bool process_goes(pid_t pid, milliseconds within = milliseconds(5000)) {
  const auto until = steady_clock::now() + within;
  while (!process_gone(pid)) {
    if (steady_clock::now() >= until) return false;
    ::usleep(10'000);
  }
  return true;
}

bool no_children_left() {
  int status = 0;
  return ::waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD;
}

}  // namespace

TEST_CASE("exec runs argv and returns its output and exit code") {
  auto r = run({{"argv", {"sh", "-c", "echo out; echo err >&2; exit 0"}}});
  CHECK(r.outcome == "succeeded");
  CHECK(r.exit_code == 0);
  CHECK(r.output == "out\nerr\n");
  CHECK_FALSE(r.output_truncated);
  CHECK(r.output_bytes == 8);
  CHECK(no_children_left());
}

TEST_CASE("exec reports a nonzero exit as exit_nonzero with the code") {
  auto r = run({{"argv", {"sh", "-c", "echo failing; exit 3"}}});
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::exit_nonzero);
  CHECK(r.exit_code == 3);
  CHECK(r.output == "failing\n");
  CHECK(r.error.find("status 3") != std::string::npos);
}

TEST_CASE("exec gives the task's env and cwd and inherits nothing else") {
  test::TempDir dir;
  ::setenv("CAIRN_SECRET_OF_THE_AGENT", "leak", 1);
  auto r = run({{"argv", {"sh", "-c", "echo \"$GREETING|$CAIRN_SECRET_OF_THE_AGENT|$(pwd)\""}},
                {"env", {{"GREETING", "hello"}}},
                {"cwd", "/work"}},
               seconds(30), {}, -1, milliseconds(300), Root(dir.path()));
  ::unsetenv("CAIRN_SECRET_OF_THE_AGENT");
  // cwd is a host path resolved through Root: /work under the temp root does not exist yet.
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::invalid_args);
  std::filesystem::create_directories(dir.path() / "work");
  r = run({{"argv", {"sh", "-c", "echo \"$GREETING|$CAIRN_SECRET_OF_THE_AGENT|$(pwd)\""}},
           {"env", {{"GREETING", "hello"}}},
           {"cwd", "/work"}},
          seconds(30), {}, -1, milliseconds(300), Root(dir.path()));
  CHECK(r.outcome == "succeeded");
  CHECK(r.output == "hello||" + std::filesystem::canonical(dir.path() / "work").string() + "\n");
}

TEST_CASE("exec stops the whole process group at the timeout") {
  test::TempDir dir;
  const auto pidfile = dir.path() / "bg.pid";
  const auto started = steady_clock::now();
  auto r = run({{"argv", {"sh", "-c", "sleep 300 & echo $! > " + pidfile.string() + "; wait"}}}, seconds(1));
  const auto took = steady_clock::now() - started;
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::timeout);
  CHECK(took < seconds(10));
  std::ifstream in(pidfile);
  pid_t bg = 0;
  in >> bg;
  REQUIRE(bg > 0);
  CHECK(process_goes(bg));  // the background sleep went with its group
  CHECK(no_children_left());
}

TEST_CASE("exec kills a process that ignores SIGTERM after the grace") {
  const auto started = steady_clock::now();
  auto r = run({{"argv", {"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"}}}, seconds(1), {}, -1,
               milliseconds(200));
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::timeout);
  CHECK(r.output.starts_with("ready\n"));
  CHECK(steady_clock::now() - started < seconds(10));
  CHECK(no_children_left());
}

TEST_CASE("exec keeps only the tail of a huge output and marks the truncation") {
  // 256 MiB through the pipe: the result holds the cap, not the stream.
  auto r = run({{"argv", {"sh", "-c", "head -c 268435456 /dev/zero; echo; echo the-end"}}}, seconds(120));
  CHECK(r.outcome == "succeeded");
  CHECK(r.output_bytes == 268435456 + 9);
  CHECK(r.output_truncated);
  CHECK(r.output.size() == protocol::kMaxTaskOutputBytes);
  CHECK(r.output.ends_with("\nthe-end\n"));
}

TEST_CASE("exec keeps the last lines of a long text output") {
  auto r = run({{"argv", {"seq", "1", "100000"}}});
  CHECK(r.outcome == "succeeded");
  CHECK(r.output_truncated);
  CHECK(r.output.ends_with("99999\n100000\n"));
  CHECK(r.output.size() == protocol::kMaxTaskOutputBytes);
}

TEST_CASE("exec stops its process group when the cancel fd fires") {
  UniqueFd cancel(::eventfd(0, EFD_CLOEXEC));
  REQUIRE(cancel);
  std::uint64_t one = 1;
  REQUIRE(::write(cancel.get(), &one, sizeof one) == sizeof one);
  auto r = run({{"argv", {"sleep", "300"}}}, seconds(300), {}, cancel.get());
  CHECK(r.outcome == "cancelled");
  CHECK_FALSE(r.reason.has_value());
  CHECK(no_children_left());
}

TEST_CASE("exec refuses what the allowlist does not name, whatever the task asks") {
  KindSettings settings{.exec_allowlist = {"/bin/true"}};
  CHECK(run({{"argv", {"/bin/true"}}}, seconds(10), settings).outcome == "succeeded");
  auto r = run({{"argv", {"/bin/sh", "-c", "echo escaped"}}}, seconds(10), settings);
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::invalid_args);
  CHECK(r.error.find("allowlist") != std::string::npos);
  CHECK(r.output.empty());
  // A bare name is not its path: the allowlist is matched exactly.
  CHECK(run({{"argv", {"true"}}}, seconds(10), settings).reason == FailureReason::invalid_args);
  // Nor may the task pick which binary an allowed name resolves to, or preload code into it.
  KindSettings by_name{.exec_allowlist = {"true"}};
  CHECK(run({{"argv", {"true"}}}, seconds(10), by_name).outcome == "succeeded");
  for (const char* var : {"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH"}) {
    auto refused = run({{"argv", {"true"}}, {"env", {{var, "/tmp"}}}}, seconds(10), by_name);
    CHECK_MESSAGE(refused.reason == FailureReason::invalid_args, var);
    CHECK(refused.error.find(var) != std::string::npos);
  }
}

TEST_CASE("exec refuses malformed arguments as invalid_args") {
  const Json cases[] = {
      Json::array(),
      Json::object(),
      {{"argv", Json::array()}},
      {{"argv", "sh -c x"}},
      {{"argv", {"sh", 3}}},
      {{"argv", {""}}},
      {{"argv", {"true"}}, {"env", {{"A=B", "x"}}}},
      {{"argv", {"true"}}, {"env", {{"A", 1}}}},
      {{"argv", {"true"}}, {"cwd", "relative/dir"}},
      {{"argv", {std::string("a\0b", 3)}}},
      {{"argv", {"/nonexistent/program"}}},
      {{"argv", {"no-such-command-in-path"}}},
  };
  for (const auto& args : cases) {
    CAPTURE(dump_json(args));
    auto r = run(args, seconds(10));
    CHECK(r.outcome == "failed");
    CHECK(r.reason == FailureReason::invalid_args);
    CHECK_FALSE(r.error.empty());
  }
}

TEST_CASE("an unknown kind is invalid_args naming the known ones") {
  Root root("/");
  auto r = run_task("format-disk", Json::object(), {}, {.root = root, .clock = SystemClock::instance()});
  CHECK(r.outcome == "failed");
  CHECK(r.reason == FailureReason::invalid_args);
  CHECK(r.error.find("format-disk") != std::string::npos);
}

TEST_CASE("a task's process does not outlive an agent killed with SIGKILL") {
  test::TempDir dir;
  const auto pidfile = dir.path() / "task.pid";
  const pid_t agent = ::fork();
  REQUIRE(agent >= 0);
  if (agent == 0) {  // the "agent": runs a task that would run for five minutes
    Root root("/");
    const TaskContext ctx{.root = root, .clock = SystemClock::instance(), .timeout = seconds(300)};
    run_task("exec", {{"argv", {"sh", "-c", "echo $$ > " + pidfile.string() + ".tmp; mv " + pidfile.string() +
                                               ".tmp " + pidfile.string() + "; exec sleep 300"}}},
             {}, ctx);
    ::_exit(0);
  }
  pid_t task = 0;
  const auto deadline = steady_clock::now() + seconds(20);
  while (task == 0 && steady_clock::now() < deadline) {
    std::ifstream in(pidfile);
    in >> task;
    if (task == 0) ::usleep(20000);
  }
  REQUIRE(task > 0);
  CHECK_FALSE(process_gone(task));
  ::kill(agent, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(agent, &status, 0) == agent);
  CHECK(process_goes(task, seconds(10)));
}
