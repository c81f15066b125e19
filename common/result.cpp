#include "common/result.hpp"

namespace cairn {

std::string_view errc_name(Errc code) {
  switch (code) {
    case Errc::usage: return "usage";
    case Errc::data: return "bad_data";
    case Errc::unavailable: return "unavailable";
    case Errc::internal: return "internal";
    case Errc::io: return "io";
    case Errc::temporary: return "temporary";
    case Errc::refused: return "refused";
    case Errc::config: return "config";
  }
  return "internal";
}

Error Error::with_context(std::string_view what) const {
  Error e = *this;
  e.message = std::string(what) + ": " + message;
  return e;
}

}  // namespace cairn
