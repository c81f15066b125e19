// A real swtpm (TPM 2.0 simulator, Debian package swtpm) for the persist tests: started on two
// consecutive free loopback ports (the swtpm TCTI speaks to PORT and its control channel on
// PORT+1) with a fresh state directory, so every instance is a different TPM.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

#include "tests/support/process.hpp"

namespace cairn::test {

inline bool port_free(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

inline bool port_answers(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

inline bool have_program(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"}) {
    if (::access((std::filesystem::path(dir) / name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

class Swtpm {
 public:
  // nullopt when swtpm is not installed or did not come up (the reason in `why`).
  static std::optional<Swtpm> start(const std::filesystem::path& dir, std::string& why) {
    if (!have_program("swtpm")) {
      why = "swtpm is not installed (Debian package swtpm; ./tools/install-deps installs it)";
      return std::nullopt;
    }
    std::filesystem::create_directories(dir / "state");
    std::mt19937 rng(std::random_device{}());
    std::uniform_int_distribution<int> pick(20000, 60000);
    for (int attempt = 0; attempt < 20; ++attempt) {
      const int port = pick(rng);
      if (!port_free(port) || !port_free(port + 1)) continue;
      auto p = Process::spawn({"/usr/bin/swtpm", "socket", "--tpm2",
                               "--server", "type=tcp,port=" + std::to_string(port) + ",bindaddr=127.0.0.1",
                               "--ctrl", "type=tcp,port=" + std::to_string(port + 1) + ",bindaddr=127.0.0.1",
                               "--tpmstate", "dir=" + (dir / "state").string(),
                               "--flags", "not-need-init,startup-clear"},
                              {}, dir / "swtpm.log");
      if (!p) continue;
      if (!wait_for([&] { return port_answers(port + 1) || !p->running(); }, std::chrono::seconds(10))) continue;
      if (!p->running()) continue;  // lost a race for the port
      return Swtpm(std::move(*p), port);
    }
    why = "swtpm did not start on a free loopback port: " + slurp(dir / "swtpm.log");
    return std::nullopt;
  }

  [[nodiscard]] std::string tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }
  [[nodiscard]] int port() const { return port_; }

 private:
  Swtpm(Process p, int port) : process_(std::move(p)), port_(port) {}
  Process process_;
  int port_ = 0;
};

}  // namespace cairn::test
