// Secret: key bytes held in memory only as long as needed and wiped when dropped. Never
// logged, never put in an error message.
#pragma once

#include <string.h>

#include <string>
#include <string_view>
#include <utility>

#include "common/result.hpp"

namespace cairn::agent::persist {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string bytes) : bytes_(std::move(bytes)) {}
  Secret(const Secret& other) : bytes_(other.bytes_) {}
  Secret& operator=(const Secret& other) {
    if (this != &other) {
      wipe();
      bytes_ = other.bytes_;
    }
    return *this;
  }
  Secret(Secret&& other) noexcept : bytes_(std::move(other.bytes_)) { other.wipe(); }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      bytes_ = std::move(other.bytes_);
      other.wipe();
    }
    return *this;
  }
  ~Secret() { wipe(); }

  [[nodiscard]] std::string_view view() const { return bytes_; }
  [[nodiscard]] std::size_t size() const { return bytes_.size(); }
  [[nodiscard]] bool empty() const { return bytes_.empty(); }
  friend bool operator==(const Secret& a, const Secret& b) { return a.bytes_ == b.bytes_; }

 private:
  void wipe() noexcept {
    if (!bytes_.empty()) explicit_bzero(bytes_.data(), bytes_.size());
    bytes_.clear();
  }
  std::string bytes_;
};

// 32 bytes from the kernel's CSPRNG (getrandom).
Result<Secret> random_secret(std::size_t bytes = 32);

// The keyslot passphrase made of a binary secret: its base64 (as systemd-cryptenroll does for a
// TPM2-sealed secret), so it is printable and has the secret's full entropy.
Secret passphrase_of(const Secret& secret);

// base64 (RFC 4648, with padding) for the LUKS2 token's JSON.
std::string base64_encode(std::string_view bytes);
Result<std::string> base64_decode(std::string_view text);

}  // namespace cairn::agent::persist
