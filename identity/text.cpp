#include "identity/text.hpp"

#include <algorithm>

#include "common/json.hpp"

namespace cairn::identity {

std::string valid_utf8(std::string_view text) {
  std::string s(text);
  s.erase(std::remove(s.begin(), s.end(), '\0'), s.end());
  // dump_json replaces each invalid sequence with U+FFFD; parsed back, that is the string
  // as it will leave the process. UTF-8 decoding stays the library's, never ours.
  auto back = parse_json(dump_json(Json(std::move(s))), "sanitised string");
  return back && back->is_string() ? back->get<std::string>() : std::string();
}

}  // namespace cairn::identity
