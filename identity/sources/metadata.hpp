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

// The one rule for a cloud machine's node UUID, so the same machine keeps the same id on
// every boot whichever source answers: the DMI product_uuid exactly as the kernel prints
// it, whenever the firmware gives a real one (not a placeholder). The DMI source answers
// with that same value on a boot where the metadata server does not, so both paths agree.
// Only without a usable DMI UUID (unreadable as non-root, or a placeholder) does the
// cloud's own id name the node: Azure's vmId and OpenStack's uuid as they are, and for
// clouds without a UUID (AWS, GCP, DigitalOcean, Hetzner) a name-based UUID of
// "<cloud>:<instance_id>", stable for the life of the instance and computable by an
// operator from the cloud's API. (On Azure the DMI UUID is the vmId on Gen2 VMs and the
// vmId byte-swapped on Gen1; the cloud's id stays in instance_id either way.)
Uuid cloud_node_uuid(const Context& context, std::string_view cloud, std::string_view instance_id);
Uuid cloud_node_uuid(const Context& context, const Uuid& cloud_uuid);

}  // namespace cairn::identity
