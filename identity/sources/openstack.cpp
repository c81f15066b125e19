#include "identity/sources/openstack.hpp"

#include "common/json.hpp"
#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// https://docs.openstack.org/nova/latest/user/metadata.html: GET
// /openstack/latest/meta_data.json answers uuid (the Nova instance UUID), hostname, name,
// availability_zone. It names no region nor flavor.
constexpr std::string_view kDefaultBase = "http://169.254.169.254";

}  // namespace

SourceResult OpenStackSource::probe(Context& context) {
  HttpRequest request;
  request.url = context.base_url("openstack", kDefaultBase) + "/openstack/latest/meta_data.json";
  auto response = fetch_ok(context, request);
  if (!response) return SourceResult::failed(response.error());
  auto json = parse_json(response->body, "OpenStack meta_data.json");
  if (!json) return SourceResult::failed(json.error());
  auto uuid = parse_identity_uuid(string_field(*json, "uuid"));
  if (!uuid) return SourceResult::failed("OpenStack meta_data.json uuid: " + uuid.error().message);
  Identity id;
  id.uuid = cloud_node_uuid(context, *uuid);  // Nova sets the DMI UUID to this one on KVM
  id.platform = "openstack";
  id.instance_id = uuid->str();
  id.zone = string_field(*json, "availability_zone");
  id.hostname = string_field(*json, "hostname");
  return SourceResult::answered(std::move(id), "OpenStack metadata service");
}

// https://docs.openstack.org/nova/latest/user/metadata.html: GET
// /openstack/latest/user_data answers the user data as given, 404 when there is none.
Result<std::optional<std::string>> openstack_user_data(Context& context) {
  HttpRequest request;
  request.url = context.base_url("openstack", kDefaultBase) + "/openstack/latest/user_data";
  return fetch_user_data_body(context, std::move(request));
}

}  // namespace cairn::identity
