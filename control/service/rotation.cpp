#include "control/service/rotation.hpp"

#include "common/log.hpp"
#include "common/time.hpp"
#include "control/ca.hpp"

namespace cairn::control {
namespace {

std::unexpected<ApiError> not_current(const AuthorizedNode& node) {
  return refuse(403, "cert_not_current",
                "certificate " + node.serial_hex() + " was replaced by a rotation the node has used; "
                "only the node's newest certificate may rotate",
                "rotate with the certificate the last rotation returned");
}

}  // namespace

ApiResult<protocol::CertificateResponse> Rotation::rotate(const AuthorizedNode& node,
                                                          const protocol::RotateRequest& request) {
  const std::string& node_id = node.node_id();
  auto csr = check_node_csr(request.csr_pem, node_id);
  if (!csr) return std::unexpected(csr.error());

  auto lock = locks_.lock(node_id);
  if (!auth_.is_current(node_id, node.serial_hex())) return not_current(node);
  auto issued = issuer_.issue(csr->get(), node_id, "rotate");
  if (!issued) return std::unexpected(issued.error());
  auto outcome = store_.commit_rotation(node.serial_hex(), issued->record);
  if (!outcome) {
    log::error("store.error", {{"message", outcome.error().message}});
    return refuse(500, "store_error", outcome.error().message, outcome.error().hint);
  }
  if (*outcome == RotationOutcome::not_current) return not_current(node);
  auth_.rotated(node_id, node.serial_hex(), issued->record);
  log::info("cert.rotated", {{"node", node_id}, {"old_serial", node.serial_hex()}, {"serial", issued->record.serial_hex}});
  return issuer_.response_for(node_id, *issued);
}

void Rotation::confirm_first_use(const AuthorizedNode& node) {
  if (!node.first_use_after_rotation()) return;
  auto lock = locks_.lock(node.node_id());
  const std::int64_t retire_at = to_unix_ms(clock_.now()) +
                                 std::chrono::duration_cast<std::chrono::milliseconds>(config_.rotation_grace).count();
  if (auto ok = store_.confirm_rotation(node.serial_hex(), retire_at); !ok) {
    // The request goes on; the next one with this certificate tries again.
    log::error("cert.confirm_failed", {{"node", node.node_id()}, {"serial", node.serial_hex()}, {"message", ok.error().message}});
    return;
  }
  if (auto old = auth_.confirm(node.serial_hex(), retire_at)) {
    log::info("cert.rotation_confirmed", {{"node", node.node_id()},
                                          {"serial", node.serial_hex()},
                                          {"old_serial", *old},
                                          {"old_retires_at", format_rfc3339(from_unix_ms(retire_at))}});
  }
}

}  // namespace cairn::control
