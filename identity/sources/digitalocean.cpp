#include "identity/sources/digitalocean.hpp"

#include "common/json.hpp"
#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// https://docs.digitalocean.com/reference/api/metadata-api/: GET /metadata/v1.json, no
// header needed, answers droplet_id (a number), hostname, region.
constexpr std::string_view kDefaultBase = "http://169.254.169.254";

}  // namespace

SourceResult DigitalOceanSource::probe(Context& context) {
  HttpRequest request;
  request.url = context.base_url("digitalocean", kDefaultBase) + "/metadata/v1.json";
  auto response = fetch_ok(context, request);
  if (!response) return SourceResult::failed(response.error());
  auto json = parse_json(response->body, "DigitalOcean metadata");
  if (!json) return SourceResult::failed(json.error());
  if (!json->is_object() || !json->contains("droplet_id") ||
      !(*json)["droplet_id"].is_number_unsigned() || (*json)["droplet_id"].get<std::uint64_t>() == 0) {
    return SourceResult::failed("DigitalOcean metadata: no positive \"droplet_id\"");
  }
  Identity id;
  id.platform = "digitalocean";
  id.instance_id = std::to_string((*json)["droplet_id"].get<std::uint64_t>());
  id.uuid = cloud_node_uuid(context, "digitalocean", id.instance_id);
  id.region = string_field(*json, "region");
  id.hostname = string_field(*json, "hostname");
  return SourceResult::answered(std::move(id), "DigitalOcean droplet metadata");
}

// https://docs.digitalocean.com/reference/api/metadata-api/: GET /metadata/v1/user-data
// answers the droplet's user data as given, 404 or empty when there is none.
Result<std::optional<std::string>> digitalocean_user_data(Context& context) {
  HttpRequest request;
  request.url = context.base_url("digitalocean", kDefaultBase) + "/metadata/v1/user-data";
  return fetch_user_data_body(context, std::move(request));
}

}  // namespace cairn::identity
