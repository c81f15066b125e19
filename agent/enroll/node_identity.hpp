// The node's identity as the protocol carries it: the identity cascade, run once.
#pragma once

#include "agent/config.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::agent {

Result<protocol::NodeIdentity> discover_node_identity(const AgentConfig& config);

}  // namespace cairn::agent
