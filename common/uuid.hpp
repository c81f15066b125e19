// UUIDs as node identities (RFC 9562 text form, lower case on output).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace cairn {

struct Uuid {
  std::array<std::uint8_t, 16> bytes{};

  [[nodiscard]] std::string str() const;  // 8-4-4-4-12, lower case
  [[nodiscard]] bool is_nil() const;      // 00000000-0000-...
  [[nodiscard]] bool is_max() const;      // ffffffff-ffff-... (seen on cheap boards' DMI)
  friend bool operator==(const Uuid&, const Uuid&) = default;
};

// Accepts the 36-character form in either case, surrounding whitespace ignored.
// Errc::data, naming the text, on anything else.
Result<Uuid> parse_uuid(std::string_view text);

// Like parse_uuid, but also refuses the nil and max UUIDs: neither can name a machine.
Result<Uuid> parse_identity_uuid(std::string_view text);

// A random (version 4) UUID from the OpenSSL CSPRNG.
Uuid random_uuid();

}  // namespace cairn
