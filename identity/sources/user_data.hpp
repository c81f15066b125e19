// The cloud's user-data: the text an operator attached to the instance when launching it,
// where one marketplace image finds its customer's bootstrap configuration (issue 16). Read
// from the same metadata servers as the identity, with the same rules (IMDSv2 session token,
// Metadata-Flavor, Metadata: true) and the same bounds; what it means is the agent's business
// (agent/boot/bootstrap.hpp), this unit only fetches it.
// A cloud is asked only when the DMI hint names it, the configuration forces it (`clouds`)
// or the configuration gives its metadata base URL: with none of those, nothing is probed.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/result.hpp"
#include "identity/cascade.hpp"
#include "identity/source.hpp"

namespace cairn::identity {

// Cloud user-data is small (Azure and EC2 cap it at 16-64 KiB); a larger answer is refused.
inline constexpr std::size_t kMaxUserDataBytes = 64 * 1024;

// Each cloud's user-data, through `context` (its base URL and time budget). nullopt: the
// instance has none (the documented 404 or an empty answer). Defined beside each cloud's
// identity source, which knows its endpoint and protocol.
//   aws           GET /latest/user-data (IMDSv2 session token)
//   gcp           GET /computeMetadata/v1/instance/attributes/cairn-config, else .../user-data
//   azure         GET /metadata/instance/compute/userData?api-version=2021-01-01&format=text
//                 (base64: decoded here; not base64 is Errc::data)
//   digitalocean  GET /metadata/v1/user-data
//   hetzner       GET /hetzner/v1/userdata
//   openstack     GET /openstack/latest/user_data
Result<std::optional<std::string>> aws_user_data(Context& context);
Result<std::optional<std::string>> gcp_user_data(Context& context);
Result<std::optional<std::string>> azure_user_data(Context& context);
Result<std::optional<std::string>> digitalocean_user_data(Context& context);
Result<std::optional<std::string>> hetzner_user_data(Context& context);
Result<std::optional<std::string>> openstack_user_data(Context& context);

// One GET of a user-data document, capped at kMaxUserDataBytes: a 404 or an empty 2xx body is
// nullopt (no user-data), another non-2xx status an error naming it.
Result<std::optional<std::string>> fetch_user_data_body(Context& context, HttpRequest request);

struct UserDataAttempt {
  std::string cloud;
  Outcome outcome = Outcome::skipped;  // answered: it had user-data; skipped: none, or not asked
  std::string reason;
};

struct UserData {
  std::optional<std::string> cloud;  // the cloud whose user-data was found
  std::string text;                  // its user-data (may hold a secret: never log it)
  std::vector<UserDataAttempt> attempts;  // only the clouds that were asked
};

// Asks the clouds that may be present (see above), in cascade order, each within
// config.source_timeout and all within config.cloud_budget; the first with user-data wins.
// A cloud that fails (unreachable, HTTP error, bad base64, too large) is recorded in
// attempts and the next one is asked: it never fails the caller.
UserData fetch_user_data(const Config& config, HttpClient& http, const Clock& clock = SystemClock::instance());

}  // namespace cairn::identity
