#include "identity/sources/metadata.hpp"

#include "identity/name_uuid.hpp"

namespace cairn::identity {

Result<HttpResponse> fetch_ok(Context& context, HttpRequest request) {
  auto response = context.fetch(request);
  if (!response) return response;
  if (response->status >= 200 && response->status < 300) return response;
  return fail(response->status >= 500 ? Errc::unavailable : Errc::data,
              request.method + " " + request.url + ": HTTP " + std::to_string(response->status),
              "check the metadata base URL of this source");
}

Uuid cloud_node_uuid(const Context& context, std::string_view cloud, std::string_view instance_id) {
  if (context.hint().product_uuid) return *context.hint().product_uuid;
  return cloud_instance_uuid(cloud, instance_id);
}

Uuid cloud_node_uuid(const Context& context, const Uuid& cloud_uuid) {
  return context.hint().product_uuid ? *context.hint().product_uuid : cloud_uuid;
}

std::string string_field(const Json& j, std::string_view key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace cairn::identity
