// Text that came from the host or a metadata server (DMI, fw-cfg, the kernel command line,
// metadata answers) made safe to carry: firmware and servers may hand us any bytes, and
// a string that is not UTF-8 must never crash a JSON dump or an enrollment request.
#pragma once

#include <string>
#include <string_view>

namespace cairn::identity {

// `text` with every invalid UTF-8 sequence replaced by U+FFFD (nlohmann's replacement, so
// the result is exactly what common/json.hpp's dump_json would emit) and NUL bytes dropped.
std::string valid_utf8(std::string_view text);

}  // namespace cairn::identity
