#include "control/state.hpp"

#include <arpa/inet.h>

#include <algorithm>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "control/ca.hpp"

namespace cairn::control {
namespace {

constexpr std::size_t kMaxPemBytes = 1 << 20;

void add_unique(std::vector<std::string>& list, const std::string& value) {
  if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
}

// SANs go into an OpenSSL config string ("DNS:a,IP:b"), so a comma or colon in a name
// would smuggle in another entry: only hostname characters pass.
bool valid_dns_name(const std::string& name) {
  if (name.empty() || name.size() > 253) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '*';
  });
}

bool valid_ip(const std::string& ip) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, ip.c_str(), buf) == 1 || ::inet_pton(AF_INET6, ip.c_str(), buf) == 1;
}

Result<CertificateAuthority> obtain_ca(const InitOptions& options, const Clock& clock) {
  if (options.ca_cert_file.empty() != options.ca_key_file.empty()) {
    return fail(Errc::usage, "--ca-cert and --ca-key go together",
                "pass both to import a CA, or neither to create one");
  }
  if (options.ca_cert_file.empty()) {
    // A random suffix keeps two clusters' CAs apart in a trust store that holds both.
    return CertificateAuthority::create("Cairn cluster CA " + random_hex(4), options.ca_lifetime,
                                        clock);
  }
  auto cert = read_file(options.ca_cert_file, kMaxPemBytes);
  if (!cert) return fail(cert.error().with_context("--ca-cert"));
  auto key = read_file(options.ca_key_file, kMaxPemBytes);
  if (!key) return fail(key.error().with_context("--ca-key"));
  auto ca = CertificateAuthority::from_pem(*cert, *key);
  if (!ca) {
    return fail(ca.error().with_context(options.ca_cert_file.string() + " + " +
                                        options.ca_key_file.string()));
  }
  return ca;
}

}  // namespace

Result<InitReport> init_state(const StatePaths& state, const InitOptions& options, const Clock& clock) {
  InitReport report;
  report.server_dns_names = {"localhost"};
  report.server_ips = {"127.0.0.1", "::1"};
  for (const auto& name : options.server_dns_names) {
    if (!valid_dns_name(name)) {
      return fail(Errc::usage, "--san-dns '" + name + "': not a host name",
                  "use letters, digits, '-', '.' (and '*' for a wildcard)");
    }
    add_unique(report.server_dns_names, name);
  }
  for (const auto& ip : options.server_ips) {
    if (!valid_ip(ip)) {
      return fail(Errc::usage, "--san-ip '" + ip + "': not an IPv4 or IPv6 address");
    }
    add_unique(report.server_ips, ip);
  }
  if (!valid_admin_name(options.admin_name)) {
    return fail(Errc::usage, "--admin '" + options.admin_name + "': not a valid admin name",
                "use up to " + std::to_string(kMaxAdminNameBytes) + " letters, digits, '-', '.', '_' or '@'");
  }

  const std::vector<std::filesystem::path> files = {state.ca_cert(),     state.ca_key(),
                                                    state.server_cert(), state.server_key(),
                                                    state.admin_cert(),  state.admin_key()};
  for (const auto& f : files) {
    std::error_code ec;
    if (!std::filesystem::exists(f, ec)) continue;
    if (!options.force) {
      return fail(Errc::config, "state dir " + state.dir.string() + " is already initialized (" +
                                    f.filename().string() + " exists)",
                  "use it with 'cairn-control serve', or pass --force --yes-replace-ca to replace its "
                  "credentials (nodes enrolled under the old CA must then enroll again)");
    }
    if (!options.yes_replace_ca) {
      return fail(Errc::config,
                  "--force on the initialized state dir " + state.dir.string() +
                      " would replace its CA and orphan every enrolled node (their certificates "
                      "no longer verify, they must all enroll again)",
                  "if that is what you want, pass --yes-replace-ca as well");
    }
    break;
  }
  // The state dir holds private keys: only its owner may list it.
  if (auto ok = make_dirs(state.dir, 0700); !ok) return fail(ok.error());

  auto ca = obtain_ca(options, clock);
  if (!ca) return fail(ca.error());
  report.created_ca = options.ca_cert_file.empty();
  const auto ca_info = cert_info(ca->cert());
  report.ca_subject = ca_info.subject_cn;
  report.ca_fingerprint_sha256 = ca_info.fingerprint_sha256;

  // P-256 for the server: every TLS client supports it (Ed25519 server certs are not).
  auto server_key = generate_key(KeyType::p256);
  if (!server_key) return fail(server_key.error());
  auto server_cert = ca->issue_server_cert(server_key->get(), report.server_dns_names,
                                           report.server_ips, options.server_lifetime, clock);
  if (!server_cert) return fail(server_cert.error().with_context("server certificate"));

  // P-256 for the admin too: curl and browsers present it as a client cert without fuss.
  auto admin_key = generate_key(KeyType::p256);
  if (!admin_key) return fail(admin_key.error());
  auto admin_cert = ca->issue_admin_cert(admin_key->get(), options.admin_name,
                                         options.admin_lifetime, clock);
  if (!admin_cert) return fail(admin_cert.error().with_context("admin certificate"));
  report.admin_cn = std::string(kAdminCnPrefix) + options.admin_name;

  auto ca_key_pem = private_key_pem(ca->key());
  auto server_pem = cert_pem(server_cert->get());
  auto server_key_pem = private_key_pem(server_key->get());
  auto admin_pem = cert_pem(admin_cert->get());
  auto admin_key_pem = private_key_pem(admin_key->get());
  for (const auto* r : {&ca_key_pem, &server_pem, &server_key_pem, &admin_pem, &admin_key_pem}) {
    if (!*r) return fail(r->error());
  }

  struct Out {
    std::filesystem::path path;
    std::string data;
    mode_t mode;
  };
  // Keys first: a crash half way leaves no certificate without its key.
  const Out outs[] = {
      {state.ca_key(), *ca_key_pem, 0600},
      {state.ca_cert(), ca->cert_pem(), 0644},
      {state.server_key(), *server_key_pem, 0600},
      {state.server_cert(), *server_pem + ca->cert_pem(), 0644},
      {state.admin_key(), *admin_key_pem, 0600},
      {state.admin_cert(), *admin_pem, 0644},
  };
  for (const auto& out : outs) {
    if (auto ok = write_file_atomic(out.path, out.data, out.mode); !ok) return fail(ok.error());
    report.written.push_back(out.path);
  }
  // The escrow master key (nodes without a TPM): made here, with the CA, so every replica
  // started from a copy of this dir reads the same escrowed keys. Never replaced, even by a
  // forced init: the escrowed volume keys would become unreadable.
  const auto escrow_key = state.dir / "escrow.key";
  if (!std::filesystem::exists(escrow_key)) {
    if (auto ok = write_file_atomic(escrow_key, random_hex(32) + "\n", 0600); !ok) return fail(ok.error());
    report.written.push_back(escrow_key);
  }
  return report;
}

}  // namespace cairn::control
