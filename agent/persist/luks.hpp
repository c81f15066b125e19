// BlockCrypt: the LUKS2 operations the persist volume needs, behind one interface so the
// volume flow is tested with a fake. The real backend (luks.cpp) is the only file speaking
// libcryptsetup. Every keyslot is opened by a passphrase; the LUKS volume key itself is made
// by libcryptsetup from the kernel's RNG when formatting and never leaves it.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/persist/secret.hpp"
#include "common/result.hpp"

namespace cairn::agent::persist {

struct LuksToken {
  int id = 0;
  std::string type;  // "cairn-tpm2", "cairn-escrow", "systemd-tpm2", ...
  std::string json;  // the token's whole JSON object as stored in the header
};

struct LuksHeader {
  enum class State {
    none,        // no LUKS signature: the device is empty or holds something else
    luks2,       // a LUKS2 header that libcryptsetup loads
    unreadable,  // a LUKS signature, but the header does not load (damaged, LUKS1, ...)
  };
  State state = State::none;
  std::string detail;  // why unreadable
  std::string uuid;
  std::string label;
  std::vector<int> active_keyslots;
  std::vector<LuksToken> tokens;
};

// An open device-mapper mapping and the LUKS volume behind it (luks_uuid empty: not LUKS).
struct ActiveMapping {
  std::string luks_uuid;
  std::string backing_device;
};

class BlockCrypt {
 public:
  virtual ~BlockCrypt() = default;
  virtual Result<LuksHeader> inspect(const std::filesystem::path& device) = 0;
  // Formats LUKS2 (aes-xts-plain64, 512-bit volume key, 4096-byte sectors) with one keyslot
  // opened by passphrase; returns that keyslot.
  virtual Result<int> format(const std::filesystem::path& device, const Secret& passphrase,
                             const std::string& label) = 0;
  // A new keyslot opened by new_passphrase, authorized by an existing one.
  virtual Result<int> add_keyslot(const std::filesystem::path& device, const Secret& existing,
                                  const Secret& new_passphrase) = 0;
  virtual Status remove_keyslot(const std::filesystem::path& device, int keyslot) = 0;
  // Stores a token (JSON object with "type" and "keyslots"); replace: that token id is
  // overwritten. Returns the token id.
  virtual Result<int> set_token(const std::filesystem::path& device, const std::string& json,
                                std::optional<int> replace) = 0;
  // The keyslot that passphrase opens (no device-mapper needed); Errc::refused if none.
  virtual Result<int> check_passphrase(const std::filesystem::path& device, const Secret& passphrase) = 0;
  // Needs device-mapper: /dev/mapper/<name>.
  virtual Status activate(const std::filesystem::path& device, const std::string& name, const Secret& passphrase) = 0;
  virtual Status deactivate(const std::string& name) = 0;
  // /dev/mapper/<name> as it is open now; nullopt when no such mapping exists (or no
  // device-mapper at all).
  virtual Result<std::optional<ActiveMapping>> active_mapping(const std::string& name) = 0;
};

std::unique_ptr<BlockCrypt> make_libcryptsetup();

}  // namespace cairn::agent::persist
