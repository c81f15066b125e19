#include "agent/runtime/stop_signal.hpp"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <stdexcept>

namespace cairn::agent {
namespace {

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

StopSignal::StopSignal() : owner_(::pthread_self()) {
  const sigset_t set = stop_set();
  if (::pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) throw std::runtime_error("pthread_sigmask failed");
  fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd_) throw std::runtime_error("signalfd failed");
}

StopSignal::~StopSignal() {
  drain();
  const sigset_t set = stop_set();
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void StopSignal::drain() {
  signalfd_siginfo info{};
  while (::read(fd_.get(), &info, sizeof info) == sizeof info) stopped_ = true;
}

bool StopSignal::wait_until(const Clock& clock, Clock::MonoTime deadline) {
  if (stopped_) return true;
  if (clock.sleep_until(deadline, fd_.get())) drain();
  return stopped_;
}

bool StopSignal::poll() {
  if (!stopped_) drain();
  return stopped_;
}

void StopSignal::request() const { ::pthread_kill(owner_, SIGTERM); }

}  // namespace cairn::agent
