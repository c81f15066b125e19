#include "common/uuid.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <stdexcept>

namespace cairn {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r' || s.back() == '\0')) s.remove_suffix(1);
  return s;
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out.push_back(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f ? c : '?');
  if (s.size() > 64) out += "...";
  return out;
}

}  // namespace

std::string Uuid::str() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 0xf]);
  }
  return out;
}

bool Uuid::is_nil() const {
  return std::all_of(bytes.begin(), bytes.end(), [](auto b) { return b == 0; });
}
bool Uuid::is_max() const {
  return std::all_of(bytes.begin(), bytes.end(), [](auto b) { return b == 0xff; });
}

Result<Uuid> parse_uuid(std::string_view raw) {
  const auto text = trim(raw);
  if (text.empty()) return fail(Errc::data, "empty, not a UUID");
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' || text[23] != '-') {
    return fail(Errc::data, "not a UUID ('" + printable(text) + "')");
  }
  Uuid uuid;
  std::size_t byte = 0;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] == '-') {
      ++i;
      continue;
    }
    const int hi = hex_value(text[i]);
    const int lo = hex_value(text[i + 1]);
    if (hi < 0 || lo < 0) return fail(Errc::data, "not a UUID ('" + printable(text) + "')");
    uuid.bytes[byte++] = static_cast<std::uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return uuid;
}

Result<Uuid> parse_identity_uuid(std::string_view text) {
  auto uuid = parse_uuid(text);
  if (!uuid) return uuid;
  if (uuid->is_nil()) return fail(Errc::data, "nil UUID (all zeros) cannot name a machine");
  if (uuid->is_max()) return fail(Errc::data, "all-FF UUID is a firmware placeholder, not an identity");
  return uuid;
}

Uuid random_uuid() {
  Uuid uuid;
  if (RAND_bytes(uuid.bytes.data(), static_cast<int>(uuid.bytes.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed: the OpenSSL CSPRNG is not seeded");
  }
  uuid.bytes[6] = static_cast<std::uint8_t>((uuid.bytes[6] & 0x0f) | 0x40);  // version 4
  uuid.bytes[8] = static_cast<std::uint8_t>((uuid.bytes[8] & 0x3f) | 0x80);  // RFC variant
  return uuid;
}

}  // namespace cairn
