// cairn-fake-metadata: one cloud's fake metadata server (tests/support/fake_clouds) as a
// process on 127.0.0.1, for ./tools/demo and manual runs. Runs until SIGTERM or SIGINT.
//   cairn-fake-metadata [--cloud aws] [--port-file FILE] [--user-data FILE]
// --user-data serves FILE as the instance's user-data where the cloud serves it (h-userdata).
#include <pthread.h>

#include <csignal>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>

#include "common/fs.hpp"
#include "tests/support/fake_clouds.hpp"

namespace {

constexpr int kExUsage = 64;
constexpr int kExIo = 74;
constexpr int kExSoftware = 70;

constexpr std::string_view kClouds[] = {"aws", "gcp", "azure", "digitalocean", "hetzner", "openstack"};

int usage(const std::string& why) {
  std::cerr << "cairn-fake-metadata: " << why << "\n"
            << "usage: cairn-fake-metadata [--cloud aws|gcp|azure|digitalocean|hetzner|openstack]"
               " [--port-file FILE] [--user-data FILE]\n";
  return kExUsage;
}

int run(int argc, char** argv) {
  std::string cloud = "aws";
  std::string port_file;
  std::string user_data_file;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--user-data" && i + 1 < argc) {
      user_data_file = argv[++i];
    } else if ((arg == "--cloud" || arg == "--port-file") && i + 1 < argc) {
      (arg == "--cloud" ? cloud : port_file) = argv[++i];
    } else if (arg == "--help" || arg == "-h") {
      usage("serves one cloud's fake metadata API on 127.0.0.1 (ephemeral port) until SIGTERM");
      return 0;
    } else {
      return usage("unknown or incomplete argument '" + std::string(arg) + "'");
    }
  }
  bool known = false;
  for (auto c : kClouds) known = known || c == cloud;
  if (!known) return usage("--cloud '" + cloud + "': not a cloud the fakes know");

  // Block the stop signals before the server starts its threads, so they inherit the mask
  // and only sigwait() below sees SIGTERM/SIGINT.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  cairn::test::FakeCloud fake(cloud);
  if (!user_data_file.empty()) {
    auto text = cairn::read_file(user_data_file, 1 << 20);
    if (!text) {
      std::cerr << "cairn-fake-metadata: --user-data " << user_data_file << ": " << text.error().message << "\n";
      return kExIo;
    }
    fake.set_user_data(std::move(*text));
  }
  const std::string url = fake.base_url();  // http://127.0.0.1:PORT
  if (!port_file.empty()) {
    auto written = cairn::write_file_atomic(port_file, url.substr(url.rfind(':') + 1) + "\n");
    if (!written) {
      std::cerr << "cairn-fake-metadata: --port-file " << port_file << ": " << written.error().message << "\n";
      return kExIo;
    }
  }
  std::cout << "cairn-fake-metadata: " << cloud << " metadata on " << url << " (instance "
            << (fake.instance().instance_id.empty() ? fake.instance().uuid : fake.instance().instance_id)
            << ")" << std::endl;
  int signal = 0;
  sigwait(&stop_signals, &signal);
  std::cout << "cairn-fake-metadata: stopping on signal " << signal << " after " << fake.requests()
            << " requests (" << fake.refused() << " refused for breaking the protocol)" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "cairn-fake-metadata: " << e.what() << "\n";
    return kExSoftware;
  }
}
