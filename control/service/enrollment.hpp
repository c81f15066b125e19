// POST /v1/enroll: a bootstrap token and a CSR become a node certificate. A plain fleet
// token enrolls new ids only; an existing, unrevoked id needs a token bound to it, the
// operator's `node allow-reenroll`, or proof of the node's current key. Enrollments of one
// id are serialised, so the store and the authorisation cache agree on its certificate.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "control/service.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/cert_issuer.hpp"
#include "control/service/event_log.hpp"
#include "control/service/id_locks.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

class Enrollment {
 public:
  Enrollment(const ServiceConfig& config, const Clock& clock, Store& store, AuthCache& auth,
             const CertIssuer& issuer, EventLog& events, IdLocks& locks)
      : config_(config), clock_(clock), store_(store), auth_(auth), issuer_(issuer), events_(events),
        locks_(locks) {}

  ApiResult<protocol::CertificateResponse> enroll(std::string_view bearer_token,
                                                  const protocol::EnrollRequest& request);

  [[nodiscard]] std::int64_t total() const { return total_.load(); }
  void set_total(std::int64_t n) { total_ = n; }

 private:
  ApiResult<TokenRecord> usable_token(std::string_view bearer_token, std::int64_t now);
  // Which rule lets this request replace the existing node, or the node_exists refusal.
  ApiResult<ExistingNode> reenroll_rule(const NodeRecord& existing, const TokenRecord& token,
                                        const protocol::EnrollRequest& request, const X509_REQ* csr,
                                        std::int64_t now, std::string& how);
  Status check_proof(const std::string& node_id, const protocol::EnrollRequest& request, std::int64_t now);
  std::unexpected<ApiError> node_exists(const std::string& node_id, const TokenRecord& token,
                                        const protocol::EnrollRequest& request, const X509_REQ* csr,
                                        const std::string& why);
  Labels merged_labels(const TokenRecord& token, const protocol::EnrollRequest& request,
                       const std::string& node_id) const;

  const ServiceConfig& config_;
  const Clock& clock_;
  Store& store_;
  AuthCache& auth_;
  const CertIssuer& issuer_;
  EventLog& events_;
  IdLocks& locks_;
  std::atomic<std::int64_t> total_{0};
};

}  // namespace cairn::control
