#include "agent/enroll/enroll.hpp"

#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent {
namespace {

constexpr std::size_t kMaxTokenBytes = 4096;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

Result<std::string> bootstrap_token(const AgentConfig& config, const EnrollOptions& options) {
  if (!options.token.empty()) return options.token;
  auto text = read_file_if_exists(config.token_file, kMaxTokenBytes);
  if (!text) return fail(text.error().with_context("bootstrap token"));
  if (!*text || trim(**text).empty()) {
    return fail(Errc::config, "no bootstrap token (looked in " + config.token_file.string() + ")",
                "create one with `cairn-control token create` and pass --token or write it to that file");
  }
  return trim(std::move(**text));
}

struct CheckedAnswer {
  NewCredentials creds;
  CertInfo info;
};

// The answer must be a certificate for this node and this key, chaining both to the CA sent
// and to the anchors the node already trusts (`trusted_pem`): a control service cannot
// hand the node a CA of its choosing.
Result<CheckedAnswer> check_answer(const protocol::CertificateResponse& answer, const EVP_PKEY* key,
                                   const std::string& key_pem, std::string_view node_id,
                                   std::string_view trusted_pem, const Clock& clock) {
  auto cert = parse_cert_pem(answer.certificate_pem);
  if (!cert) return fail(cert.error().with_context("certificate from control"));
  const auto info = cert_info(cert->get());
  if (info.subject_cn != node_id) {
    return fail(Errc::refused, "control issued a certificate for '" + info.subject_cn + "', not for this node " +
                                   std::string(node_id));
  }
  if (X509_check_private_key(cert->get(), const_cast<EVP_PKEY*>(key)) != 1) {
    return fail(Errc::refused, "control issued a certificate for another key", "report this to the operator");
  }
  if (auto ok = verify_cert_chain(cert->get(), answer.ca_chain_pem, clock.now()); !ok) {
    return fail(ok.error().with_context("certificate from control"));
  }
  if (auto ok = verify_cert_chain(cert->get(), trusted_pem, clock.now()); !ok) {
    return fail(ok.error().with_context("certificate from control, against the pinned CA"));
  }
  return CheckedAnswer{{key_pem, answer.certificate_pem, answer.ca_chain_pem}, info};
}

// The anchors a first enrollment must chain to: the --ca bundle, or the certificate of the
// sent chain whose fingerprint is pinned.
Result<std::string> pinned_anchors(const AgentConfig& config, std::string_view sent_chain) {
  if (!config.ca_file.empty()) return read_file(config.ca_file, 1 << 20);
  auto chain = parse_cert_chain_pem(sent_chain);
  if (!chain) return fail(chain.error().with_context("CA chain from control"));
  for (const auto& c : *chain) {
    if (cert_info(c.get()).fingerprint_sha256 == config.ca_fingerprint) return cert_pem(c.get());
  }
  return fail(Errc::refused, "the CA chain from control does not hold the pinned CA " + config.ca_fingerprint,
              "check --ca-fingerprint against `cairn-control init` of this cluster");
}

struct KeyAndCsr {
  EvpPkey key;
  std::string key_pem;
  std::string csr_pem;
};

Result<KeyAndCsr> new_key_and_csr(std::string_view node_id) {
  auto key = generate_key(KeyType::ed25519);
  if (!key) return fail(key.error());
  auto pem = private_key_pem(key->get());
  if (!pem) return fail(pem.error());
  auto csr = make_csr_pem(key->get(), node_id);
  if (!csr) return fail(csr.error());
  return KeyAndCsr{std::move(*key), std::move(*pem), std::move(*csr)};
}

}  // namespace

Result<TlsOptions> control_tls(const AgentConfig& config, const std::optional<InstalledCredentials>& creds) {
  TlsOptions tls;
  if (!config.ca_file.empty()) {
    tls.ca_file = config.ca_file.string();
  } else if (creds) {
    tls.ca_file = creds->files.ca().string();  // the chain saved at enrollment, itself pinned
  } else {
    tls.ca_fingerprint_sha256 = config.ca_fingerprint;
  }
  if (tls.ca_file.empty() && tls.ca_fingerprint_sha256.empty()) {
    return fail(Errc::config, "no CA to verify the control service against",
                "pass --ca FILE (ca.crt of cairn-control init) or --ca-fingerprint SHA256, or set them in agent.json");
  }
  if (creds) {
    tls.client_cert_file = creds->files.cert().string();
    tls.client_key_file = creds->files.key().string();
  }
  return tls;
}

Result<std::string> enrolled_control_url(const AgentConfig& config) {
  if (!config.control_url.empty()) return config.control_url;
  const auto path = config.state_dir() / "enrollment.json";
  auto text = read_file_if_exists(path, 64 * 1024);
  if (!text) return fail(text.error());
  if (*text) {
    auto j = parse_json(**text, path.string());
    if (j && j->is_object() && (*j)["control_url"].is_string()) return (*j)["control_url"].get<std::string>();
  }
  return fail(Errc::config, "no control service URL", "pass --control https://HOST:PORT or set control_url in agent.json");
}

std::string credentials_problem(const InstalledCredentials& creds, std::string_view node_id, Clock::WallTime now) {
  if (creds.cert.subject_cn != node_id) {
    return "installed certificate is for node " + creds.cert.subject_cn + ", this node is " + std::string(node_id);
  }
  if (now >= creds.cert.not_after) return "installed certificate expired at " + format_rfc3339(creds.cert.not_after);
  auto cert = parse_cert_pem(read_file(creds.files.cert(), 64 * 1024).value_or(""));
  if (!cert) return "installed certificate is unreadable";
  if (auto ok = verify_cert_chain(cert->get(), creds.ca_pem, now); !ok) return ok.error().message;
  return {};
}

std::string reenrollment_hint(std::string_view node_id) {
  const std::string id(node_id);
  return "this node needs re-enrollment with a token bound to its id: on the control host run "
         "`cairn-control token create --expect-id " + id + "`, then here `cairn-agent enroll --token-file FILE`";
}

Result<EnrollOutcome> enroll(const AgentConfig& config, const protocol::NodeIdentity& identity,
                             const EnrollOptions& options, const Clock& clock) {
  CredentialStore store(config.state_dir());
  auto installed = store.load();
  if (!installed && !options.force) return fail(installed.error());
  if (installed && *installed && !options.force) {
    const auto problem = credentials_problem(**installed, identity.node_id, clock.now());
    if (problem.empty()) {
      return EnrollOutcome{true, identity.node_id, (*installed)->cert, enrolled_control_url(config).value_or("")};
    }
    log::info("enroll.again", {{"node", identity.node_id}, {"reason", problem}});
  }
  // Enrolling again (an expired certificate): the control service the node enrolled with.
  auto control_url = enrolled_control_url(config);
  if (!control_url) return fail(control_url.error());
  auto token = bootstrap_token(config, options);
  if (!token) return fail(token.error());
  // Enrollment authenticates the server only: the node has no certificate yet.
  auto tls = control_tls(config, std::nullopt);
  if (!tls) return fail(tls.error());

  auto fresh = new_key_and_csr(identity.node_id);
  if (!fresh) return fail(fresh.error().with_context("enroll"));
  ControlClient client(*control_url, *tls);
  protocol::EnrollRequest request{identity, fresh->csr_pem, config.labels};
  auto answer = client.enroll(*token, request);
  if (!answer) return fail(answer.error().with_context("enroll"));
  auto anchors = pinned_anchors(config, answer->ca_chain_pem);
  if (!anchors) return fail(anchors.error().with_context("enroll"));
  auto checked = check_answer(*answer, fresh->key.get(), fresh->key_pem, identity.node_id, *anchors, clock);
  if (!checked) return fail(checked.error().with_context("enroll"));
  if (auto ok = store.install(checked->creds); !ok) return fail(ok.error().with_context("enroll: install credentials"));

  const Json record = {{"node_id", identity.node_id}, {"identity", protocol::to_json(identity)},
                       {"control_url", *control_url}, {"enrolled_at", format_rfc3339(clock.now())}};
  if (auto ok = write_file_atomic(config.state_dir() / "enrollment.json", dump_json(record, 2) + "\n"); !ok) {
    return fail(ok.error().with_context("enroll"));
  }
  const auto& info = checked->info;
  log::info("enroll.ok", {{"node", identity.node_id}, {"serial", info.serial_hex},
                          {"not_after", format_rfc3339(info.not_after)}});
  return EnrollOutcome{false, identity.node_id, info, *control_url};
}

Result<IssuedCredentials> request_rotation(ControlClient& client, const std::string& node_id,
                                           std::string_view trusted_ca_pem, const Clock& clock) {
  auto fresh = new_key_and_csr(node_id);
  if (!fresh) return fail(fresh.error().with_context("rotate"));
  auto answer = client.rotate(protocol::RotateRequest{fresh->csr_pem});
  if (!answer) return fail(answer.error().with_context("rotate"));
  auto checked = check_answer(*answer, fresh->key.get(), fresh->key_pem, node_id, trusted_ca_pem, clock);
  if (!checked) return fail(checked.error().with_context("rotate"));
  return IssuedCredentials{std::move(checked->creds), checked->info};
}

Result<CertInfo> rotate_certificate(ControlClient& client, CredentialStore& store, const std::string& node_id,
                                    std::string_view trusted_ca_pem, const Clock& clock) {
  auto issued = request_rotation(client, node_id, trusted_ca_pem, clock);
  if (!issued) return fail(issued.error());
  if (auto ok = store.install(issued->creds); !ok) return fail(ok.error().with_context("rotate: install credentials"));
  return issued->info;
}

}  // namespace cairn::agent
