// Name-based (version 5, SHA-1) UUIDs: a stable node UUID for clouds whose metadata names
// the machine by a non-UUID id (an EC2 instance id, a droplet number).
#pragma once

#include <string_view>

#include "common/uuid.hpp"

namespace cairn::identity {

// Cairn's namespace for name-based node UUIDs (RFC 9562 section 5.5). Never change it:
// every derived node UUID depends on it.
inline constexpr std::string_view kCairnNamespace = "f3ce6a3f-a860-4f22-9d40-0e02ebb68caf";

// RFC 9562 section 5.5: SHA-1 over namespace bytes then name, version 5, RFC variant.
Uuid name_uuid_v5(const Uuid& name_space, std::string_view name);

// The node UUID of <cloud>:<instance_id> in Cairn's namespace, e.g. "aws:i-0abc...".
Uuid cloud_instance_uuid(std::string_view cloud, std::string_view instance_id);

}  // namespace cairn::identity
