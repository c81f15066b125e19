#include "agent/enroll/node_identity.hpp"

#include "identity/cascade.hpp"

namespace cairn::agent {

protocol::NodeIdentity to_node_identity(const identity::Identity& id) {
  return protocol::NodeIdentity{id.uuid.str(), id.source,        id.platform,      id.instance_id,
                                id.region,     id.zone,          id.instance_type, id.hostname};
}

Result<protocol::NodeIdentity> discover_node_identity(const AgentConfig& config) {
  auto http = make_http_client();
  const auto found = identity::discover(config.identity, *http);
  if (!found.identity) {
    return fail(found.error.value_or(Error{Errc::internal, "no identity source answered", {}})
                    .with_context("identity"));
  }
  return to_node_identity(*found.identity);
}

}  // namespace cairn::agent
