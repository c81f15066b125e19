// The node's identity as the protocol carries it: the identity cascade, run once.
#pragma once

#include "agent/config.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"
#include "identity/source.hpp"

namespace cairn::agent {

Result<protocol::NodeIdentity> discover_node_identity(const AgentConfig& config);

// The wire form of a discovered identity (its strings are valid UTF-8: the cascade
// sanitises every source's answer, so the enrollment request always serialises).
protocol::NodeIdentity to_node_identity(const identity::Identity& id);

}  // namespace cairn::agent
