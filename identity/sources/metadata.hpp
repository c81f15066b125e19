// What the cloud sources share: one bounded GET/PUT that turns transport errors and HTTP
// statuses into reasons, and the choice of node UUID for clouds without one.
#pragma once

#include <string>
#include <string_view>

#include "common/http.hpp"
#include "common/json.hpp"
#include "identity/source.hpp"

namespace cairn::identity {

// Sends request through context; a non-2xx status is an error naming it (Errc::unavailable
// for 5xx, Errc::data otherwise). The response is returned for 2xx only.
Result<HttpResponse> fetch_ok(Context& context, HttpRequest request);

// A string member of a metadata JSON object; "" when j is not an object, lacks the key or
// holds another type there (metadata fields are optional facts, never worth a failure).
std::string string_field(const Json& j, std::string_view key);

// The node UUID of a cloud machine whose metadata carries no UUID (AWS, GCP, DigitalOcean,
// Hetzner): the DMI product_uuid when the firmware gives a real one, so the identity stays
// the same on a boot where the metadata server does not answer and the cascade falls
// through to the DMI source; else a name-based UUID of "<cloud>:<instance_id>", stable
// for the life of the instance and computable by an operator from the cloud's API.
Uuid cloud_node_uuid(const Context& context, std::string_view cloud, std::string_view instance_id);

}  // namespace cairn::identity
