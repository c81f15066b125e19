// POST /v1/certificates/rotate: the node's newest certificate buys a new one for a fresh
// CSR. Once the node uses the new certificate, the one it replaces authorizes requests for a
// short grace (those in flight), then is refused, and may never rotate again: a rotated-out
// or stolen key cannot mint certificates. Until that first use the old certificate stays
// current, so a node that lost the answer (network, a full or read-only disk) rotates again
// instead of locking itself out; the unused certificate is then superseded.
#pragma once

#include "common/clock.hpp"
#include "control/service.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/cert_issuer.hpp"
#include "control/service/id_locks.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

class Rotation {
 public:
  Rotation(const ServiceConfig& config, const Clock& clock, Store& store, AuthCache& auth,
           const CertIssuer& issuer, IdLocks& locks)
      : config_(config), clock_(clock), store_(store), auth_(auth), issuer_(issuer), locks_(locks) {}

  ApiResult<protocol::CertificateResponse> rotate(const AuthorizedNode& node,
                                                  const protocol::RotateRequest& request);
  // Called on each authorized request that is the first use of a rotation's new certificate:
  // the certificate it replaces retires after the grace.
  void confirm_first_use(const AuthorizedNode& node);

 private:
  const ServiceConfig& config_;
  const Clock& clock_;
  Store& store_;
  AuthCache& auth_;
  const CertIssuer& issuer_;
  IdLocks& locks_;
};

}  // namespace cairn::control
