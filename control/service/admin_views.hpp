// The admin API's reads and operator actions: bootstrap tokens, nodes (list, show, revoke,
// allow re-enrollment), events, and admin credentials. Answers are JSON for /v1/admin/.
#pragma once

#include <string_view>

#include "common/clock.hpp"
#include "control/ca.hpp"
#include "control/service.hpp"
#include "control/service/auth_cache.hpp"
#include "control/service/id_locks.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

// How long `node allow-reenroll` leaves the door open for one enrollment.
inline constexpr std::chrono::hours kReenrollWindow{1};
inline constexpr std::chrono::seconds kAdminCertLifetime{std::chrono::hours(24 * 365)};

class AdminViews {
 public:
  AdminViews(const Clock& clock, Store& store, AuthCache& auth, const CertificateAuthority& ca, IdLocks& locks)
      : clock_(clock), store_(store), auth_(auth), ca_(ca), locks_(locks) {}

  ApiResult<Json> create_token(const Json& body);
  ApiResult<Json> list_tokens();
  ApiResult<Json> revoke_token(std::string_view id);
  ApiResult<Json> list_nodes();
  ApiResult<Json> show_node(std::string_view id);
  ApiResult<Json> revoke_node(std::string_view id);
  ApiResult<Json> allow_reenroll(std::string_view id);
  ApiResult<Json> list_events(const EventFilter& filter);
  ApiResult<Json> create_admin(const Json& body);
  ApiResult<Json> list_admins();
  ApiResult<Json> revoke_admin(const AuthorizedAdmin& by, std::string_view name);

 private:
  Json node_summary(const NodeRecord& n, std::int64_t now);

  const Clock& clock_;
  Store& store_;
  AuthCache& auth_;
  const CertificateAuthority& ca_;
  IdLocks& locks_;
};

}  // namespace cairn::control
