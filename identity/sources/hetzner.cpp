#include "identity/sources/hetzner.hpp"

#include <map>

#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// https://docs.hetzner.cloud/#server-metadata: GET /hetzner/v1/metadata answers YAML with
// top-level `instance-id`, `hostname`, `region`, `availability-zone` among others.
constexpr std::string_view kDefaultBase = "http://169.254.169.254";

std::string strip(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) {
    s = s.substr(1, s.size() - 2);
  }
  return std::string(s);
}

// The few scalar keys we need from the top level of the YAML: `key: value` lines that start
// at column 0. Nested blocks (vendor_data, network-config) are indented and ignored.
std::map<std::string, std::string> top_level_scalars(std::string_view yaml) {
  std::map<std::string, std::string> out;
  while (!yaml.empty()) {
    const auto end = yaml.find('\n');
    std::string_view line = yaml.substr(0, end);
    yaml = end == std::string_view::npos ? std::string_view() : yaml.substr(end + 1);
    if (line.empty() || line.front() == ' ' || line.front() == '\t' || line.front() == '#') continue;
    const auto colon = line.find(": ");
    if (colon == std::string_view::npos) continue;
    out.emplace(std::string(line.substr(0, colon)), strip(line.substr(colon + 2)));
  }
  return out;
}

}  // namespace

SourceResult HetznerSource::probe(Context& context) {
  HttpRequest request;
  request.url = context.base_url("hetzner", kDefaultBase) + "/hetzner/v1/metadata";
  auto response = fetch_ok(context, request);
  if (!response) return SourceResult::failed(response.error());
  auto keys = top_level_scalars(response->body);
  const auto& instance_id = keys["instance-id"];
  if (instance_id.empty() || instance_id.find_first_not_of("0123456789") != std::string::npos) {
    return SourceResult::failed("Hetzner metadata: no numeric instance-id ('" +
                                instance_id.substr(0, 40) + "')");
  }
  Identity id;
  id.platform = "hetzner";
  id.instance_id = instance_id;
  id.uuid = cloud_node_uuid(context, "hetzner", id.instance_id);
  id.region = keys["region"];
  id.zone = keys["availability-zone"];
  id.hostname = keys["hostname"];
  return SourceResult::answered(std::move(id), "Hetzner Cloud server metadata");
}

// https://docs.hetzner.cloud/#server-metadata: GET /hetzner/v1/userdata answers the server's
// user data as given, empty when there is none.
Result<std::optional<std::string>> hetzner_user_data(Context& context) {
  HttpRequest request;
  request.url = context.base_url("hetzner", kDefaultBase) + "/hetzner/v1/userdata";
  return fetch_user_data_body(context, std::move(request));
}

}  // namespace cairn::identity
