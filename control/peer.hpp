// Who is on the other end of a TLS connection, as the server saw it after verifying the
// client certificate against the cluster CA. The bottom of control/: depends on nothing.
#pragma once

#include <string>
#include <string_view>

namespace cairn::control {

// Admin certificates carry this CN prefix ("admin:alice"); node certificates carry the node
// UUID as CN, so the CA can never issue one that passes for the other.
inline constexpr std::string_view kAdminCnPrefix = "admin:";

struct Peer {
  bool has_cert = false;
  std::string subject_cn;  // node UUID, or "admin:<name>"
  std::string serial_hex;  // as CertInfo::serial_hex
  [[nodiscard]] bool is_admin() const { return has_cert && subject_cn.starts_with(kAdminCnPrefix); }
};

}  // namespace cairn::control
