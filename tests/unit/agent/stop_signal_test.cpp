#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "agent/runtime/stop_signal.hpp"
#include "tests/support/manual_clock.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

TEST_CASE("a stop signal wakes a sleep on the clock at once, and stays seen") {
  test::ManualClock clock;
  bool woke = false;
  bool still_stopped = false;
  std::thread t([&] {
    StopSignal stop;
    CHECK_FALSE(stop.poll());
    stop.request();
    woke = stop.wait_until(clock, clock.monotonic() + hours(1));
    still_stopped = stop.wait_until(clock, clock.monotonic() + hours(1)) && stop.stopped();
  });
  t.join();
  CHECK(woke);
  CHECK(still_stopped);
}

TEST_CASE("a second SIGTERM pending when the StopSignal goes away does not kill the process") {
  // Unblocking a pending SIGTERM would deliver it (default action: terminate), so a service
  // that already stopped cleanly would die with 143; the destructor reads it first. Run in a
  // child process, whose way of ending is the check.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    test::ManualClock clock;
    std::thread t([&] {
      StopSignal stop;
      stop.request();
      if (!stop.wait_until(clock, clock.monotonic())) ::_exit(3);
      stop.request();  // pending again as the loop leaves
    });
    t.join();
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK_MESSAGE(WIFEXITED(status), "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
  CHECK(WEXITSTATUS(status) == 0);
}
