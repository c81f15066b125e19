#include "identity/sources/gcp.hpp"

#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// https://cloud.google.com/compute/docs/metadata/querying-metadata: requests must carry
// `Metadata-Flavor: Google` (else 403) and answers carry it back. The server is also
// reachable at the link-local address, which needs no DNS in an initramfs (the same page).
constexpr std::string_view kDefaultBase = "http://169.254.169.254";

std::string last_segment(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// europe-west1-b -> europe-west1 (a GCE zone is its region plus "-<letter>").
std::string region_of_zone(const std::string& zone) {
  const auto dash = zone.rfind('-');
  return dash == std::string::npos ? std::string() : zone.substr(0, dash);
}

}  // namespace

SourceResult GcpSource::probe(Context& context) {
  const std::string base = context.base_url("gcp", kDefaultBase) + "/computeMetadata/v1/instance/";
  const auto get = [&](std::string_view key) -> Result<std::string> {
    HttpRequest request;
    request.url = base + std::string(key);
    request.headers = {{"Metadata-Flavor", "Google"}};
    auto response = fetch_ok(context, request);
    if (!response) return fail(response.error());
    if (response->header("metadata-flavor") != "Google") {
      return fail(Errc::data, "GET " + request.url +
                                  ": answer lacks Metadata-Flavor: Google, not a GCE metadata server");
    }
    return response->body;
  };
  auto instance_id = get("id");
  if (!instance_id) return SourceResult::failed(instance_id.error());
  // A GCE instance id is a decimal number; anything else is not the metadata server.
  if (instance_id->empty() || instance_id->size() > 20 ||
      instance_id->find_first_not_of("0123456789") != std::string::npos) {
    return SourceResult::failed("GCE metadata instance/id: not a numeric id ('" +
                                instance_id->substr(0, 40) + "')");
  }
  Identity id;
  id.platform = "gcp";
  id.instance_id = *instance_id;
  // The metadata server serves no UUID; the GCE DMI product_uuid is the VM's UUID.
  id.uuid = cloud_node_uuid(context, "gcp", id.instance_id);
  // zone is "projects/<number>/zones/<zone>", machine-type ".../machineTypes/<type>".
  if (auto zone = get("zone")) {
    id.zone = last_segment(*zone);
    id.region = region_of_zone(id.zone);
  }
  if (auto type = get("machine-type")) id.instance_type = last_segment(*type);
  if (auto hostname = get("hostname")) id.hostname = *hostname;
  return SourceResult::answered(std::move(id), "GCE metadata server");
}

// https://cloud.google.com/compute/docs/metadata/predefined-metadata-keys: custom metadata is
// under instance/attributes/<key>, 404 when the key is not set. `cairn-config` is Cairn's own
// key (the operator keeps `user-data` for cloud-init), else `user-data`, as cloud-init reads it.
Result<std::optional<std::string>> gcp_user_data(Context& context) {
  const std::string base = context.base_url("gcp", kDefaultBase) + "/computeMetadata/v1/instance/attributes/";
  for (const char* key : {"cairn-config", "user-data"}) {
    HttpRequest request;
    request.url = base + key;
    request.headers = {{"Metadata-Flavor", "Google"}};
    auto body = fetch_user_data_body(context, std::move(request));
    if (!body) return body;
    if (*body) return body;
  }
  return std::optional<std::string>();
}

}  // namespace cairn::identity
