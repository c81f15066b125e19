#include "common/json.hpp"

namespace cairn {

Result<Json> parse_json(std::string_view text, std::string_view what) {
  auto j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return fail(Errc::data, std::string(what) + ": malformed JSON", "send a valid JSON document");
  }
  return j;
}

std::string dump_json(const Json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

}  // namespace cairn
