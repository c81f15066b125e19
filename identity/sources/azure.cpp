#include "identity/sources/azure.hpp"

#include "common/crypto.hpp"
#include "common/json.hpp"
#include "identity/placeholders.hpp"
#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service: requests need
// `Metadata: true` and an api-version (else 400); compute.vmId is the VM's unique UUID.
constexpr std::string_view kDefaultBase = "http://169.254.169.254";
constexpr std::string_view kApiVersion = "2021-02-01";

}  // namespace

SourceResult AzureSource::probe(Context& context) {
  HttpRequest request;
  request.url = context.base_url("azure", kDefaultBase) +
                "/metadata/instance?api-version=" + std::string(kApiVersion);
  request.headers = {{"Metadata", "true"}};
  auto response = fetch_ok(context, request);
  if (!response) return SourceResult::failed(response.error());
  auto json = parse_json(response->body, "Azure IMDS instance document");
  if (!json) return SourceResult::failed(json.error());
  const Json compute = json->is_object() && json->contains("compute") && (*json)["compute"].is_object()
                           ? (*json)["compute"]
                           : Json::object();
  const auto vm_id = string_field(compute, "vmId");
  auto uuid = parse_identity_uuid(vm_id);
  if (!uuid) return SourceResult::failed("Azure IMDS compute.vmId: " + uuid.error().message);
  // vmId is the DMI product_uuid on Gen2 VMs and that UUID byte-swapped on Gen1 VMs. The
  // node UUID follows cloud_node_uuid's rule (the DMI form when there is one), so a boot
  // where IMDS does not answer and the DMI source does gives this same id.
  std::string relation;
  if (const auto& dmi = context.hint().product_uuid) {
    if (*dmi == *uuid) {
      relation = "; vmId equals the DMI product_uuid";
    } else if (smbios_byte_swapped(*dmi) == *uuid) {
      relation = "; vmId is the DMI product_uuid byte-swapped (Gen1): the DMI form names the node";
    } else {
      relation =
          "; vmId differs from the DMI product_uuid " + dmi->str() + ", which names the node";
    }
  }
  Identity id;
  id.uuid = cloud_node_uuid(context, *uuid);
  id.platform = "azure";
  id.instance_id = string_field(compute, "resourceId").empty() ? vm_id : string_field(compute, "resourceId");
  id.region = string_field(compute, "location");
  id.zone = string_field(compute, "zone");
  id.instance_type = string_field(compute, "vmSize");
  const Json os = compute.contains("osProfile") && compute["osProfile"].is_object()
                      ? compute["osProfile"]
                      : Json::object();
  id.hostname = string_field(os, "computerName").empty() ? string_field(compute, "name") : string_field(os, "computerName");
  return SourceResult::answered(std::move(id),
                                "Azure IMDS api-version " + std::string(kApiVersion) + relation);
}

// https://learn.microsoft.com/azure/virtual-machines/user-data: IMDS serves the VM's userData
// base64-encoded (api-version 2021-01-01 or later), empty when none was given.
Result<std::optional<std::string>> azure_user_data(Context& context) {
  HttpRequest request;
  request.url = context.base_url("azure", kDefaultBase) +
                "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
  request.headers = {{"Metadata", "true"}};
  auto body = fetch_user_data_body(context, request);
  if (!body || !*body) return body;
  std::string encoded;
  for (const char c : **body) {
    if (c != '\n' && c != '\r' && c != ' ' && c != '\t') encoded.push_back(c);
  }
  if (encoded.empty()) return std::optional<std::string>();
  auto decoded = base64_decode(encoded);
  if (!decoded) {
    // The answer may be the operator's secret garbled: its bytes are never quoted.
    return fail(Errc::data, "GET " + request.url + ": userData is not base64 (" + std::to_string(encoded.size()) +
                                " characters)",
                "Azure serves userData base64-encoded: check what answers at this metadata URL");
  }
  if (decoded->empty()) return std::optional<std::string>();
  return std::optional<std::string>(std::move(*decoded));
}

}  // namespace cairn::identity
