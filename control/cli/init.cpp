// `cairn-control init --state DIR`: creates the CA (or imports the operator's), the server
// certificate and the first admin credential.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "control/cli/commands.hpp"
#include "control/state.hpp"

namespace cairn::control::cli {
namespace {

struct InitArgs {
  std::string state;
  std::vector<std::string> san_dns;
  std::vector<std::string> san_ip;
  std::string admin = "admin";
  std::string ca_cert;
  std::string ca_key;
  bool force = false;
  bool yes_replace_ca = false;
};

int run_init(const InitArgs& args) {
  InitOptions options;
  options.server_dns_names = args.san_dns;
  options.server_ips = args.san_ip;
  options.admin_name = args.admin;
  options.ca_cert_file = args.ca_cert;
  options.ca_key_file = args.ca_key;
  options.force = args.force;
  options.yes_replace_ca = args.yes_replace_ca;
  const StatePaths state{args.state};
  auto report = init_state(state, options, SystemClock::instance());
  if (!report) {
    std::cerr << "cairn-control init: " << report.error().message << "\n";
    if (!report.error().hint.empty()) std::cerr << "  hint: " << report.error().hint << "\n";
    return static_cast<int>(report.error().code);
  }
  std::cout << "initialized " << state.dir.string() << "\n"
            << "  CA: " << report->ca_subject << (report->created_ca ? " (new)" : " (imported)")
            << "\n  CA SHA-256: " << report->ca_fingerprint_sha256 << "\n  server names:";
  for (const auto& n : report->server_dns_names) std::cout << " DNS:" << n;
  for (const auto& ip : report->server_ips) std::cout << " IP:" << ip;
  std::cout << "\n  admin: " << report->admin_cn << "\nwrote:\n";
  for (const auto& f : report->written) {
    const bool key = f.extension() == ".key";
    std::cout << "  " << f.string() << (key ? "  (0600, private key)" : "") << "\n";
  }
  std::cout << "next: cairn-control serve --state " << state.dir.string()
            << " --listen 127.0.0.1:8443\n";
  return 0;
}

}  // namespace

void add_init(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<InitArgs>();
  auto* cmd = app.add_subcommand("init", "create the state dir: cluster CA, server certificate, admin credential");
  cmd->add_option("--state", args->state, "state directory to create")->required();
  cmd->add_option("--san-dns", args->san_dns,
                  "extra DNS name for the server certificate (localhost is always included)");
  cmd->add_option("--san-ip", args->san_ip,
                  "extra IP address for the server certificate (127.0.0.1 and ::1 always included)");
  cmd->add_option("--admin", args->admin, "name of the first admin credential (CN admin:NAME)")
      ->capture_default_str();
  auto* ca_cert = cmd->add_option("--ca-cert", args->ca_cert, "use this CA certificate (PEM) instead of creating one");
  auto* ca_key = cmd->add_option("--ca-key", args->ca_key, "the private key (PEM) of --ca-cert");
  ca_cert->needs(ca_key);
  ca_key->needs(ca_cert);
  cmd->add_flag("--force", args->force,
                "replace the credentials of an existing state dir (needs --yes-replace-ca: every "
                "enrolled node must enroll again unless the same CA is imported)");
  cmd->add_flag("--yes-replace-ca", args->yes_replace_ca,
                "confirm that --force may replace the CA of an initialized state dir");
  cmd->callback([args, &exit_code] { exit_code = run_init(*args); });
}

}  // namespace cairn::control::cli
