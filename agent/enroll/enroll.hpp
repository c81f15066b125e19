// Enrollment and rotation: an Ed25519 key made on the node, a CSR naming the node id, the
// control service's answer checked (it is for us, for our key, chains to the CA) and the
// set installed atomically (credentials.hpp).
#pragma once

#include <string>

#include "agent/config.hpp"
#include "agent/enroll/credentials.hpp"
#include "agent/transport/control_client.hpp"
#include "common/clock.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct EnrollOptions {
  std::string token;   // empty: read from config.token_file
  bool force = false;  // enroll again even when the installed certificate is valid
};

struct EnrollOutcome {
  bool already_enrolled = false;
  std::string node_id;
  CertInfo cert;
  std::string control_url;  // the service enrolled with (configured, else enrollment.json)
};

// TLS options to reach the control service: the configured CA bundle or key pin, else the
// CA chain saved at enrollment; with client credentials when installed.
Result<TlsOptions> control_tls(const AgentConfig& config, const std::optional<InstalledCredentials>& creds);

Result<EnrollOutcome> enroll(const AgentConfig& config, const protocol::NodeIdentity& identity,
                             const EnrollOptions& options, const Clock& clock);

// The control service to talk to: the configured URL, else the one the node enrolled with
// (enrollment.json), so `cairn-agent service` needs no flags after `enroll`.
Result<std::string> enrolled_control_url(const AgentConfig& config);

// Why the installed credentials cannot be used as they are (expired, other node, not from
// the CA), or an empty string when they are good at time `now`.
std::string credentials_problem(const InstalledCredentials& creds, std::string_view node_id,
                                Clock::WallTime now);

// What a node whose certificate expired (it was off past its expiry) must do: control keeps
// its id, so a plain fleet token is refused; a token bound to the id re-enrolls it.
std::string reenrollment_hint(std::string_view node_id);

// A set control issued on rotation, checked, not yet installed.
struct IssuedCredentials {
  NewCredentials creds;
  CertInfo info;
};

// A new key and CSR, POST /v1/certificates/rotate over the current mTLS identity, and the
// answer checked: it must chain to trusted_ca_pem, the CA the node enrolled with.
Result<IssuedCredentials> request_rotation(ControlClient& client, const std::string& node_id,
                                           std::string_view trusted_ca_pem, const Clock& clock);

// request_rotation, then the set installed. The previous set stays in the archive.
Result<CertInfo> rotate_certificate(ControlClient& client, CredentialStore& store, const std::string& node_id,
                                    std::string_view trusted_ca_pem, const Clock& clock);

}  // namespace cairn::agent
