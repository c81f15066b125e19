// The benchmark's baseline: cairn-control's own HTTPS server (control/server: same TLS setup,
// sessions, parser, limits and timeouts) with a handler that answers every request with a fixed
// heartbeat-shaped JSON body: no routing, no logic, no storage. control_load runs the same load
// against it, so the ratio shows what our logic and storage cost.
#include <sys/resource.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "common/fs.hpp"
#include "control/server/server.hpp"

namespace {

using namespace cairn::control::server;

constexpr std::string_view kBody =
    R"({"desired_modules":[],"server_time":"2026-01-01T00:00:00.000Z","next_interval_s":30})";

}  // namespace

int main(int argc, char** argv) {
  std::string state, listen = "127.0.0.1:0", port_file;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--state") state = argv[i + 1];
    else if (flag == "--listen") listen = argv[i + 1];
    else if (flag == "--port-file") port_file = argv[i + 1];
    else if (flag == "--threads") threads = std::stoi(argv[i + 1]);
    else {
      std::cerr << "trivial_responder: unknown flag " << flag << "\n";
      return 64;
    }
  }
  if (state.empty()) {
    std::cerr << "usage: trivial_responder --state DIR [--listen HOST:PORT] [--port-file F] [--threads N]\n";
    return 64;
  }
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  const std::filesystem::path dir(state);
  ServerConfig config;
  const auto colon = listen.rfind(':');
  config.host = listen.substr(0, colon);
  config.port = static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1)));
  config.cert_file = dir / "server.crt";
  config.key_file = dir / "server.key";
  config.ca_file = dir / "ca.crt";
  config.threads = threads;
  config.max_connections = 1'000'000;
  Metrics metrics;
  auto server = Server::create(
      config,
      [](const RouteRequest&, ReplyFn done) { done(Reply{.status = 200, .body = std::string(kBody)}); }, metrics);
  if (!server) {
    std::cerr << "trivial_responder: " << server.error().message << "\n";
    return 1;
  }
  (*server)->stop_on_signals();
  if (!port_file.empty()) {
    if (auto w = cairn::write_file_atomic(port_file, std::to_string((*server)->port()) + "\n"); !w) {
      std::cerr << "trivial_responder: " << w.error().message << "\n";
      return 1;
    }
  }
  (*server)->run();
  return 0;
}
