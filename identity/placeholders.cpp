#include "identity/placeholders.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdio>

namespace cairn::identity {
namespace {

using Bytes = std::array<std::uint8_t, 16>;

// SMBIOS 2.6+ (DSP0134 7.2.1): time_low, time_mid and time_hi_and_version are stored
// little-endian; the kernel prints them swapped. Firmware authors fill either layout.
Bytes swap_fields(const Bytes& b) {
  Bytes s = b;
  std::reverse(s.begin(), s.begin() + 4);
  std::reverse(s.begin() + 4, s.begin() + 6);
  std::reverse(s.begin() + 6, s.begin() + 8);
  return s;
}

// Words of `width` bytes (1, 2 or 4), big-endian, that step by one nonzero constant.
bool is_progression(const Bytes& b, std::size_t width) {
  const std::size_t n = b.size() / width;
  std::array<std::uint32_t, 16> words{};
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < width; ++k) words[i] = words[i] << 8 | b[i * width + k];
  }
  const std::uint32_t mask = width == 4 ? 0xffffffffU : (1U << (8 * width)) - 1;
  const std::uint32_t step = (words[1] - words[0]) & mask;
  if (step == 0) return false;
  for (std::size_t i = 2; i < n; ++i) {
    if (((words[i] - words[i - 1]) & mask) != step) return false;
  }
  return true;
}

std::array<std::uint8_t, 32> nibbles(const Bytes& b) {
  std::array<std::uint8_t, 32> out{};
  for (std::size_t i = 0; i < b.size(); ++i) {
    out[2 * i] = b[i] >> 4;
    out[2 * i + 1] = b[i] & 0xf;
  }
  return out;
}

// The hex digits step by one nonzero constant modulo 16: 01234567-89ab-cdef-0123-...
bool is_digit_progression(const Bytes& b) {
  const auto n = nibbles(b);
  const int step = (n[1] - n[0] + 16) % 16;
  if (step == 0) return false;
  for (std::size_t i = 2; i < n.size(); ++i) {
    if ((n[i] - n[i - 1] + 16) % 16 != step) return false;
  }
  return true;
}

// The hex digits repeat with a period of at most 16 digits (8 bytes): 12341234-1234-...,
// deadbeef-dead-beef-dead-beefdeadbeef, abababab-... A random UUID repeats its first half
// with probability 2^-64.
std::size_t digit_period(const Bytes& b) {
  const auto n = nibbles(b);
  for (std::size_t p = 1; p <= 16; ++p) {
    bool periodic = true;
    for (std::size_t i = p; i < n.size() && periodic; ++i) periodic = n[i] == n[i - p];
    if (periodic) return p;
  }
  return 0;
}

// A value widely reported from the field that fits none of the shapes above (an
// unprogrammed OEM BIOS default; inventory tools such as GLPI's agent refuse it too).
constexpr std::string_view kKnownPlaceholder = "12345678-1234-5678-90ab-cddeefaabbcc";

// The bytes at even (or odd) positions step by one nonzero constant: 00 02 00 03 00 04 ...
// and its variants with junk between the counting bytes (03d40274-0435-05dc-8506-...).
bool is_interleaved_progression(const Bytes& b) {
  for (std::size_t parity = 0; parity < 2; ++parity) {
    Bytes half{};
    for (std::size_t i = 0; i < 8; ++i) half[i] = b[2 * i + parity];
    const std::uint8_t step = static_cast<std::uint8_t>(half[1] - half[0]);
    bool counting = step != 0;
    for (std::size_t i = 2; i < 8 && counting; ++i) {
      counting = static_cast<std::uint8_t>(half[i] - half[i - 1]) == step;
    }
    if (counting) return true;
  }
  return false;
}

std::optional<std::string> shape_of(const Bytes& b) {
  std::array<int, 256> count{};
  for (auto byte : b) ++count[byte];
  const auto most = std::max_element(count.begin(), count.end());
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(most - count.begin()));
  if (*most == 16) return "every byte is " + std::string(hex);
  // Ten equal bytes or more: at most six bytes vary (00000000-0000-0000-0000-<MAC> and
  // the like), too little to tell a batch of boards apart. Random UUIDs never get here.
  if (*most >= 10) return std::to_string(*most) + " of 16 bytes are " + hex;
  if (is_progression(b, 1)) return "sequential bytes";
  if (is_progression(b, 2)) return "sequential 16-bit words";
  if (is_progression(b, 4)) return "sequential 32-bit words";
  if (is_interleaved_progression(b)) return "every other byte counts up";
  if (is_digit_progression(b)) return "sequential hex digits";
  if (const auto p = digit_period(b); p != 0) {
    return "a pattern of " + std::to_string(p) + " hex digits, repeated";
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> placeholder_uuid_reason(const Uuid& uuid) {
  const auto text = uuid.str();
  if (text == kKnownPlaceholder) return "a BIOS default shipped on many boards";
  if (auto shape = shape_of(uuid.bytes)) return shape;
  if (auto shape = shape_of(swap_fields(uuid.bytes))) {
    return *shape + ", with the first three fields byte-swapped";
  }
  return std::nullopt;
}

Uuid smbios_byte_swapped(const Uuid& uuid) {
  Uuid out;
  out.bytes = swap_fields(uuid.bytes);
  return out;
}

bool is_placeholder_dmi_string(std::string_view value) {
  std::string key;
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u)) key.push_back(static_cast<char>(std::tolower(u)));
  }
  // Only punctuation, or one character repeated ("0000000", "xxxxxxxx", "........").
  if (key.empty() || std::all_of(key.begin(), key.end(), [&](char c) { return c == key[0]; })) {
    return true;
  }
  static constexpr std::array<std::string_view, 36> kPlaceholders = {
      "notsettable", "notspecified", "notapplicable", "notavailable", "notpresent",
      "notdefined", "none", "na", "null", "unknown", "undefined", "invalid", "empty",
      "default", "defaultstring", "tobefilledbyoem", "tobefilledbyoemtobefilledbyoem", "oem",
      "systemmanufacturer", "systemproductname", "systemserialnumber", "systemversion",
      "chassismanufacture", "chassismanufacturer", "chassisserialnumber", "chassisversion",
      "basebordserialnumber", "baseboardserialnumber", "type1productconfigid", "assettag",
      "assettagnumber", "noassettag", "noassetinformation", "0123456789", "123456789",
      "1234567890",
  };
  return std::find(kPlaceholders.begin(), kPlaceholders.end(), key) != kPlaceholders.end();
}

}  // namespace cairn::identity
