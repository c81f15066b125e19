#include "control/service/escrow.hpp"

#include <openssl/evp.h>

#include <memory>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "control/store/store.hpp"

namespace cairn::control {
namespace {

constexpr std::size_t kKeyBytes = 32;
constexpr std::size_t kNonceBytes = 12;
constexpr std::size_t kTagBytes = 16;

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
unsigned char* bytes(std::string& s) { return reinterpret_cast<unsigned char*>(s.data()); }

class StoreAdapter final : public EscrowKeyStore {
 public:
  explicit StoreAdapter(Store& store) : store_(store) {}
  Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) override {
    return store_.put_escrow_key_if_absent(node_id, sealed);
  }
  Result<std::optional<std::string>> find(std::string_view node_id) override { return store_.find_escrow_key(node_id); }

 private:
  Store& store_;
};

}  // namespace

std::unique_ptr<EscrowKeyStore> escrow_key_store(Store& store) { return std::make_unique<StoreAdapter>(store); }

Result<std::string> load_or_create_escrow_master_key(const std::filesystem::path& file) {
  auto text = read_file_if_exists(file, 1024);
  if (!text) return fail(text.error());
  if (*text) {
    std::string hex = **text;
    while (!hex.empty() && (hex.back() == '\n' || hex.back() == ' ')) hex.pop_back();
    auto key = hex_decode(hex);
    if (!key || key->size() != kKeyBytes) {
      return fail(Errc::config, file.string() + ": not a 32-byte key in hex",
                  "restore escrow.key from the backup of the state dir; without it escrowed keys cannot be read");
    }
    return *key;
  }
  const std::string hex = random_hex(kKeyBytes);
  if (auto ok = write_file_atomic(file, hex + "\n", 0600); !ok) return fail(ok.error());
  log::info("control.escrow_key_created", {{"file", file.string()}});
  return hex_decode(hex);
}

Result<std::string> seal_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view key) {
  if (master_key.size() != kKeyBytes) return fail(Errc::internal, "escrow master key of the wrong size");
  auto nonce = hex_decode(random_hex(kNonceBytes));
  if (!nonce) return fail(nonce.error());
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  std::string out(key.size(), '\0');
  std::string tag(kTagBytes, '\0');
  int len = 0;
  int fin = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kNonceBytes), nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, bytes(master_key), bytes(*nonce)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, bytes(node_id), static_cast<int>(node_id.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), bytes(out), &len, bytes(key), static_cast<int>(key.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), bytes(out) + len, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), bytes(tag)) != 1) {
    return fail(Errc::internal, "escrow: AES-256-GCM encryption failed: " + openssl_error());
  }
  out += tag;
  return "v1:" + hex_encode(bytes(*nonce), nonce->size()) + ":" + hex_encode(bytes(out), out.size());
}

Result<std::string> open_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view sealed) {
  const auto bad = [&](std::string what) {
    return fail(Errc::data, "escrowed key of node " + std::string(node_id) + ": " + std::move(what),
                "the escrow row or escrow.key of the state dir was changed; restore them from a backup");
  };
  if (master_key.size() != kKeyBytes) return fail(Errc::internal, "escrow master key of the wrong size");
  if (!sealed.starts_with("v1:")) return bad("unknown format");
  const auto rest = sealed.substr(3);
  const auto colon = rest.find(':');
  if (colon == std::string_view::npos) return bad("no nonce");
  auto nonce = hex_decode(rest.substr(0, colon));
  auto data = hex_decode(rest.substr(colon + 1));
  if (!nonce || !data || nonce->size() != kNonceBytes || data->size() < kTagBytes) return bad("malformed");
  std::string tag = data->substr(data->size() - kTagBytes);
  const std::string cipher = data->substr(0, data->size() - kTagBytes);
  std::string out(cipher.size(), '\0');
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  int fin = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kNonceBytes), nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, bytes(master_key), bytes(*nonce)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes(node_id), static_cast<int>(node_id.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), bytes(out), &len, bytes(cipher), static_cast<int>(cipher.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), bytes(tag)) != 1) {
    return fail(Errc::internal, "escrow: AES-256-GCM decryption setup failed: " + openssl_error());
  }
  if (EVP_DecryptFinal_ex(ctx.get(), bytes(out) + len, &fin) != 1) {
    openssl_error();  // drain the queue
    return bad("does not decrypt (wrong escrow.key, or a row of another node)");
  }
  return out;
}

ApiResult<Json> EscrowKeys::key_for(std::string_view node_id) {
  const auto internal = [&](const Error& e) {
    log::error("control.escrow_failed", {{"node", std::string(node_id)}, {"error", e.message}});
    return refuse(500, "escrow_failed", "escrow key of node " + std::string(node_id) + ": " + e.message,
                  "the operator should check the control service's log and state dir");
  };
  auto stored = store_.find(node_id);
  if (!stored) return internal(stored.error());
  std::string sealed;
  if (*stored) {
    sealed = **stored;
  } else {
    auto fresh = hex_decode(random_hex(kKeyBytes));
    if (!fresh) return internal(fresh.error());
    auto s = seal_escrow_key(master_key_, node_id, *fresh);
    if (!s) return internal(s.error());
    // A concurrent first call may have stored its own: the stored one wins, for both.
    auto kept = store_.put_if_absent(node_id, *s);
    if (!kept) return internal(kept.error());
    sealed = std::move(*kept);
    if (sealed == *s) log::info("control.escrow_key_created", {{"node", std::string(node_id)}});
  }
  auto key = open_escrow_key(master_key_, node_id, sealed);
  if (!key) return internal(key.error());
  return Json{{"node_id", std::string(node_id)}, {"key", hex_encode(bytes(*key), key->size())}};
}

}  // namespace cairn::control
