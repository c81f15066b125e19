#include "identity/name_uuid.hpp"

#include <openssl/evp.h>

#include <stdexcept>
#include <string>

namespace cairn::identity {

Uuid name_uuid_v5(const Uuid& name_space, std::string_view name) {
  std::string input(reinterpret_cast<const char*>(name_space.bytes.data()), name_space.bytes.size());
  input.append(name);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(input.data(), input.size(), digest, &size, EVP_sha1(), nullptr) != 1 || size < 16) {
    throw std::runtime_error("EVP_Digest(SHA-1) failed");  // a broken OpenSSL is a bug
  }
  Uuid uuid;
  for (std::size_t i = 0; i < uuid.bytes.size(); ++i) uuid.bytes[i] = digest[i];
  uuid.bytes[6] = static_cast<std::uint8_t>((uuid.bytes[6] & 0x0f) | 0x50);  // version 5
  uuid.bytes[8] = static_cast<std::uint8_t>((uuid.bytes[8] & 0x3f) | 0x80);  // RFC variant
  return uuid;
}

Uuid cloud_instance_uuid(std::string_view cloud, std::string_view instance_id) {
  static const Uuid kNamespace = *parse_uuid(kCairnNamespace);
  return name_uuid_v5(kNamespace, std::string(cloud) + ":" + std::string(instance_id));
}

}  // namespace cairn::identity
