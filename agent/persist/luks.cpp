// The libcryptsetup backend of BlockCrypt; the only file of Cairn that includes
// libcryptsetup.h (STYLE.md 3). Keyslots opened by a high-entropy secret (the TPM-sealed key,
// the escrow key, the recovery key) use PBKDF2 with the minimum iterations, as
// systemd-cryptenroll does for its TPM2 and recovery keyslots: a slow KDF protects a weak
// passphrase and only costs boot time for a 256-bit one.
#include "agent/persist/luks.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "common/dynamic_library.hpp"
#include "common/fd.hpp"

namespace cairn::agent::persist {
namespace {

// libcryptsetup is loaded on first use (dlopen, as agent/tasks/archive.cpp does for libarchive,
// the way systemd loads its optional libraries): the service loop never needs it, and without
// it at startup the agent maps neither it nor libdevmapper, libjson-c, libargon2 and the rest of
// its closure (agent RSS). Only the declarations of <libcryptsetup.h> are used here.
constexpr const char* kLibCryptsetup = "libcryptsetup.so.12";  // the soname since cryptsetup 2.0

#define CAIRN_CRYPTSETUP_FUNCTIONS(X) \
  X(crypt_activate_by_passphrase) \
  X(crypt_deactivate) \
  X(crypt_format) \
  X(crypt_free) \
  X(crypt_get_device_name) \
  X(crypt_get_label) \
  X(crypt_get_uuid) \
  X(crypt_init) \
  X(crypt_init_by_name) \
  X(crypt_keyslot_add_by_passphrase) \
  X(crypt_keyslot_add_by_volume_key) \
  X(crypt_keyslot_destroy) \
  X(crypt_keyslot_max) \
  X(crypt_keyslot_status) \
  X(crypt_load) \
  X(crypt_set_log_callback) \
  X(crypt_set_pbkdf_type) \
  X(crypt_status) \
  X(crypt_token_json_get) \
  X(crypt_token_json_set) \
  X(crypt_token_max) \
  X(crypt_token_status)

struct LibCryptsetup {
#define X(f) decltype(&::f) f = nullptr;
  CAIRN_CRYPTSETUP_FUNCTIONS(X)
#undef X
};

Result<LibCryptsetup> load_libcryptsetup() {
  auto so = DynamicLibrary::open(kLibCryptsetup, "LUKS2", "install libcryptsetup12 on the node");
  if (!so) return fail(so.error());
  LibCryptsetup lib;
  MissingSymbols missing;
#define X(f) so->bind(lib.f, #f, missing);
  CAIRN_CRYPTSETUP_FUNCTIONS(X)
#undef X
  if (auto ok = missing.check(kLibCryptsetup, "install libcryptsetup12 2.4 or later"); !ok) return fail(ok.error());
  return lib;
}
#undef CAIRN_CRYPTSETUP_FUNCTIONS

// Loaded once per process; a failure is remembered (the node's libraries do not change).
const Result<LibCryptsetup>& loaded_libcryptsetup() {
  static const Result<LibCryptsetup> loaded = load_libcryptsetup();
  return loaded;
}
// Only after install_logger() succeeded (every entry point calls it first).
const LibCryptsetup& lib() { return *loaded_libcryptsetup(); }

// The last error libcryptsetup reported on this thread, added to our message (its default
// logger would print to stderr, outside the CLI's contract).
thread_local std::string g_last_log;

void log_to_last(int level, const char* msg, void* /*usrptr*/) {
  if (level != CRYPT_LOG_ERROR || msg == nullptr) return;
  g_last_log = msg;
  while (!g_last_log.empty() && (g_last_log.back() == '\n' || g_last_log.back() == ' ')) g_last_log.pop_back();
}

// Loads libcryptsetup (the error says why it cannot) and routes its log to g_last_log.
Status install_logger() {
  if (const auto& loaded = loaded_libcryptsetup(); !loaded) return fail(loaded.error());
  static std::once_flag once;
  std::call_once(once, [] { lib().crypt_set_log_callback(nullptr, log_to_last, nullptr); });
  return {};
}

std::string errno_text(int rc) {
  std::string out = std::strerror(rc < 0 ? -rc : rc);
  if (!g_last_log.empty()) out += ": " + g_last_log;
  g_last_log.clear();
  return out;
}

struct CryptDeleter {
  void operator()(crypt_device* cd) const { lib().crypt_free(cd); }
};
using CryptDevice = std::unique_ptr<crypt_device, CryptDeleter>;

Result<CryptDevice> init(const std::filesystem::path& device) {
  if (auto ok = install_logger(); !ok) return fail(ok.error());
  g_last_log.clear();
  crypt_device* cd = nullptr;
  const int rc = lib().crypt_init(&cd, device.c_str());
  if (rc < 0) {
    return fail(Errc::io, "LUKS device " + device.string() + ": " + errno_text(rc), "check that the device exists");
  }
  lib().crypt_set_log_callback(cd, log_to_last, nullptr);
  return CryptDevice(cd);
}

Result<CryptDevice> load(const std::filesystem::path& device) {
  auto cd = init(device);
  if (!cd) return cd;
  const int rc = lib().crypt_load(cd->get(), CRYPT_LUKS2, nullptr);
  if (rc < 0) {
    return fail(Errc::data, "LUKS2 header of " + device.string() + ": " + errno_text(rc),
                "the header is damaged or not LUKS2; `cairn-agent persist status` shows what is there");
  }
  return cd;
}

// Minimal PBKDF2 for keyslots opened by a 256-bit random secret (see the file comment).
Status use_minimal_pbkdf(crypt_device* cd, const std::filesystem::path& device) {
  crypt_pbkdf_type pbkdf{};
  pbkdf.type = CRYPT_KDF_PBKDF2;
  pbkdf.hash = "sha256";
  pbkdf.iterations = 1000;
  pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
  const int rc = lib().crypt_set_pbkdf_type(cd, &pbkdf);
  if (rc < 0) return fail(Errc::internal, "LUKS device " + device.string() + ": PBKDF setting: " + errno_text(rc));
  return {};
}

// The LUKS magic (LUKS on-disk format, "LUKS\xba\xbe" at offset 0; LUKS2's second header at
// 16 KiB is the same magic reversed, "SKUL\xba\xbe").
Result<bool> has_luks_magic(const std::filesystem::path& device) {
  UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    return fail(Errc::io, "reading " + device.string() + ": " + std::strerror(errno), "check that the device exists");
  }
  std::array<char, 6> head{};
  const ssize_t n = ::pread(fd.get(), head.data(), head.size(), 0);
  std::array<char, 6> second{};
  const ssize_t m = ::pread(fd.get(), second.data(), second.size(), 16384);
  if (n < 0 || m < 0) return fail(Errc::io, "reading " + device.string() + ": " + std::strerror(errno));
  constexpr std::array<char, 6> kMagic{'L', 'U', 'K', 'S', '\xba', '\xbe'};
  constexpr std::array<char, 6> kMagic2{'S', 'K', 'U', 'L', '\xba', '\xbe'};
  return (n == 6 && head == kMagic) || (m == 6 && second == kMagic2);
}

class Libcryptsetup final : public BlockCrypt {
 public:
  Result<LuksHeader> inspect(const std::filesystem::path& device) override {
    LuksHeader h;
    auto magic = has_luks_magic(device);
    if (!magic) return fail(magic.error());
    if (!*magic) return h;
    auto cd = init(device);
    if (!cd) return fail(cd.error());
    const int rc = lib().crypt_load(cd->get(), CRYPT_LUKS2, nullptr);
    if (rc < 0) {
      h.state = LuksHeader::State::unreadable;
      h.detail = errno_text(rc);
      return h;
    }
    h.state = LuksHeader::State::luks2;
    if (const char* uuid = lib().crypt_get_uuid(cd->get())) h.uuid = uuid;
    if (const char* label = lib().crypt_get_label(cd->get())) h.label = label;
    const int slots = lib().crypt_keyslot_max(CRYPT_LUKS2);
    for (int i = 0; i < slots; ++i) {
      const auto st = lib().crypt_keyslot_status(cd->get(), i);
      if (st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST) h.active_keyslots.push_back(i);
    }
    const int tokens = lib().crypt_token_max(CRYPT_LUKS2);
    for (int i = 0; i < tokens; ++i) {
      const char* type = nullptr;
      const auto st = lib().crypt_token_status(cd->get(), i, &type);
      if (st == CRYPT_TOKEN_INVALID || st == CRYPT_TOKEN_INACTIVE) continue;
      const char* json = nullptr;
      if (lib().crypt_token_json_get(cd->get(), i, &json) < 0 || json == nullptr) continue;
      h.tokens.push_back(LuksToken{i, type ? type : "", json});
    }
    return h;
  }

  Result<int> format(const std::filesystem::path& device, const Secret& passphrase, const std::string& label) override {
    auto cd = init(device);
    if (!cd) return fail(cd.error());
    crypt_params_luks2 params{};
    params.sector_size = 4096;
    params.label = label.c_str();
    if (auto ok = use_minimal_pbkdf(cd->get(), device); !ok) return fail(ok.error());
    int rc = lib().crypt_format(cd->get(), CRYPT_LUKS2, "aes", "xts-plain64", nullptr, nullptr, 64, &params);
    if (rc < 0) {
      return fail(Errc::io, "formatting LUKS2 on " + device.string() + ": " + errno_text(rc),
                  "check the device is writable and at least 32 MiB");
    }
    rc = lib().crypt_keyslot_add_by_volume_key(cd->get(), CRYPT_ANY_SLOT, nullptr, 0, passphrase.view().data(),
                                         passphrase.size());
    if (rc < 0) return fail(Errc::io, "adding the first keyslot on " + device.string() + ": " + errno_text(rc));
    return rc;
  }

  Result<int> add_keyslot(const std::filesystem::path& device, const Secret& existing,
                          const Secret& new_passphrase) override {
    auto cd = load(device);
    if (!cd) return fail(cd.error());
    if (auto ok = use_minimal_pbkdf(cd->get(), device); !ok) return fail(ok.error());
    const int rc = lib().crypt_keyslot_add_by_passphrase(cd->get(), CRYPT_ANY_SLOT, existing.view().data(), existing.size(),
                                                   new_passphrase.view().data(), new_passphrase.size());
    if (rc == -EPERM) {
      return fail(Errc::refused, "adding a keyslot on " + device.string() + ": no keyslot opens with the given key",
                  "use a key that opens the volume now");
    }
    if (rc < 0) return fail(Errc::io, "adding a keyslot on " + device.string() + ": " + errno_text(rc));
    return rc;
  }

  Status remove_keyslot(const std::filesystem::path& device, int keyslot) override {
    auto cd = load(device);
    if (!cd) return fail(cd.error());
    const int rc = lib().crypt_keyslot_destroy(cd->get(), keyslot);
    if (rc < 0) {
      return fail(Errc::io, "removing keyslot " + std::to_string(keyslot) + " of " + device.string() + ": " +
                                errno_text(rc));
    }
    return {};
  }

  Result<int> set_token(const std::filesystem::path& device, const std::string& json,
                        std::optional<int> replace) override {
    auto cd = load(device);
    if (!cd) return fail(cd.error());
    const int rc = lib().crypt_token_json_set(cd->get(), replace.value_or(CRYPT_ANY_TOKEN), json.c_str());
    if (rc < 0) {
      return fail(Errc::io, "writing a LUKS2 token on " + device.string() + ": " + errno_text(rc),
                  "the header's JSON area may be full; `cryptsetup luksDump` shows it");
    }
    return rc;
  }

  Result<int> check_passphrase(const std::filesystem::path& device, const Secret& passphrase) override {
    auto cd = load(device);
    if (!cd) return fail(cd.error());
    // A NULL name only checks the key: nothing is activated, no device-mapper needed.
    const int rc = lib().crypt_activate_by_passphrase(cd->get(), nullptr, CRYPT_ANY_SLOT, passphrase.view().data(),
                                                passphrase.size(), 0);
    if (rc == -EPERM || rc == -ENOENT) {
      g_last_log.clear();
      return fail(Errc::refused, "LUKS2 volume " + device.string() + ": no keyslot opens with this key",
                  "the key is wrong for this volume");
    }
    if (rc < 0) return fail(Errc::io, "checking a key on " + device.string() + ": " + errno_text(rc));
    return rc;
  }

  Status activate(const std::filesystem::path& device, const std::string& name, const Secret& passphrase) override {
    auto cd = load(device);
    if (!cd) return fail(cd.error());
    const int rc = lib().crypt_activate_by_passphrase(cd->get(), name.c_str(), CRYPT_ANY_SLOT, passphrase.view().data(),
                                                passphrase.size(), 0);
    if (rc == -EPERM) {
      g_last_log.clear();
      return fail(Errc::refused, "activating " + device.string() + " as " + name + ": no keyslot opens with this key",
                  "the key is wrong for this volume");
    }
    if (rc < 0) {
      return fail(Errc::io, "activating " + device.string() + " as /dev/mapper/" + name + ": " + errno_text(rc),
                  "device-mapper (dm-crypt) must be available in the kernel");
    }
    return {};
  }

  Status deactivate(const std::string& name) override {
    if (auto ok = install_logger(); !ok) return fail(ok.error());
    g_last_log.clear();
    const int rc = lib().crypt_deactivate(nullptr, name.c_str());
    if (rc < 0) return fail(Errc::io, "closing /dev/mapper/" + name + ": " + errno_text(rc), "is it still mounted?");
    return {};
  }

  Result<std::optional<ActiveMapping>> active_mapping(const std::string& name) override {
    if (auto ok = install_logger(); !ok) return fail(ok.error());
    g_last_log.clear();
    const crypt_status_info status = lib().crypt_status(nullptr, name.c_str());
    if (status != CRYPT_ACTIVE && status != CRYPT_BUSY) {
      g_last_log.clear();
      return std::optional<ActiveMapping>{};
    }
    crypt_device* cd = nullptr;
    const int rc = lib().crypt_init_by_name(&cd, name.c_str());
    if (rc < 0) {
      return fail(Errc::io, "/dev/mapper/" + name + " is open but cannot be inspected: " + errno_text(rc),
                  "`dmsetup info " + name + "` shows what it is; close it with `cryptsetup close " + name + "`");
    }
    const CryptDevice owner(cd);
    ActiveMapping mapping;
    if (const char* uuid = lib().crypt_get_uuid(cd); uuid != nullptr) mapping.luks_uuid = uuid;
    if (const char* device = lib().crypt_get_device_name(cd); device != nullptr) mapping.backing_device = device;
    return std::optional<ActiveMapping>(std::move(mapping));
  }
};

}  // namespace

std::unique_ptr<BlockCrypt> make_libcryptsetup() { return std::make_unique<Libcryptsetup>(); }

}  // namespace cairn::agent::persist
