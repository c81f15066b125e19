#include "control/service/escrow.hpp"

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>

#include <cstring>
#include <memory>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/ssl.hpp"
#include "control/store/store.hpp"

namespace cairn::control {
namespace {

constexpr std::size_t kKeyBytes = 32;
// A sealed row is one small PEM block (about 600 bytes); anything far larger is not ours.
constexpr std::size_t kMaxSealedBytes = 16 * 1024;
constexpr std::string_view kMasterKeyIdPrefix = "cairn-escrow-master:";

// CMS_ContentInfo is spoken only here, so its owner is declared here (STYLE.md 8).
using CmsPtr = std::unique_ptr<CMS_ContentInfo, OpenSslDeleter<CMS_ContentInfo_free>>;

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

// CMS_add0_recipient_key takes ownership of the key and the id: they must come from
// OPENSSL_malloc (the key is freed with OPENSSL_clear_free).
unsigned char* openssl_copy(std::string_view s) {
  auto* p = static_cast<unsigned char*>(OPENSSL_malloc(s.size()));
  if (p != nullptr) std::memcpy(p, s.data(), s.size());
  return p;
}

// Wipes a string holding key material when it goes out of scope.
struct Wiped {
  std::string& s;
  ~Wiped() { OPENSSL_cleanse(s.data(), s.size()); }
};

Result<std::string> read_bio(BIO* bio, std::size_t max) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  if (n < 0 || static_cast<std::size_t>(n) > max) return fail(Errc::internal, "escrow: CMS output out of bounds");
  return std::string(data, static_cast<std::size_t>(n));
}

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

std::string escrow_master_key_id(std::string_view master_key) {
  return std::string(kMasterKeyIdPrefix) + sha256_hex(master_key).substr(0, 16);
}

Result<std::string> seal_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view key) {
  if (master_key.size() != kKeyBytes) return fail(Errc::internal, "escrow master key of the wrong size");
  if (node_id.empty() || node_id.find('\n') != std::string_view::npos) {
    return fail(Errc::internal, "escrow: node id '" + std::string(node_id) + "' cannot be bound");
  }
  const auto failed = [](std::string_view step) {
    return fail(Errc::internal, "escrow: CMS AuthEnvelopedData (AES-256-GCM): " + std::string(step) + " failed: " +
                                    openssl_error());
  };
  // The content binds the key to its node: checked after the authenticated decryption.
  std::string content = std::string(node_id) + "\n" + std::string(key);
  const Wiped wipe_content{content};
  BioPtr in(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
  if (!in) return failed("BIO_new_mem_buf");
  // An AEAD cipher makes CMS_encrypt build an AuthEnvelopedData (RFC 5083); CMS_PARTIAL leaves
  // it open for the KEK recipient.
  CmsPtr cms(CMS_encrypt(nullptr, nullptr, EVP_aes_256_gcm(), CMS_BINARY | CMS_PARTIAL));
  if (!cms) return failed("CMS_encrypt");
  const std::string id = escrow_master_key_id(master_key);
  unsigned char* kek = openssl_copy(master_key);
  unsigned char* kek_id = openssl_copy(id);
  // NID_undef: the wrap algorithm follows the KEK's size (id-aes256-wrap for 32 bytes).
  if (kek == nullptr || kek_id == nullptr ||
      CMS_add0_recipient_key(cms.get(), NID_undef, kek, kKeyBytes, kek_id, id.size(), nullptr, nullptr, nullptr) ==
          nullptr) {
    if (kek != nullptr) OPENSSL_clear_free(kek, kKeyBytes);
    OPENSSL_free(kek_id);
    return failed("CMS_add0_recipient_key");
  }
  // The memory BIO reads `content` in place (it is wiped when this function returns).
  if (CMS_final(cms.get(), in.get(), nullptr, CMS_BINARY) != 1) return failed("CMS_final");
  BioPtr out(BIO_new(BIO_s_mem()));
  if (!out || PEM_write_bio_CMS(out.get(), cms.get()) != 1) return failed("PEM_write_bio_CMS");
  return read_bio(out.get(), kMaxSealedBytes);
}

Result<std::string> open_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view sealed) {
  const auto bad = [&](std::string what) {
    return fail(Errc::data, "escrowed key of node " + std::string(node_id) + ": " + std::move(what),
                "the escrow row or escrow.key of the state dir was changed; restore them from a backup");
  };
  if (master_key.size() != kKeyBytes) return fail(Errc::internal, "escrow master key of the wrong size");
  if (sealed.starts_with("v1:")) {
    return fail(Errc::data,
                "escrowed key of node " + std::string(node_id) +
                    ": the row is in the retired v1 format (hand-made AES-GCM, written only by test builds); it is "
                    "not read",
                "delete the node's row from escrow_keys; the next fetch makes a new key, so a volume formatted with "
                "the old one opens only with its recovery key (or is set up again with `volume-setup --wipe`)");
  }
  if (sealed.size() > kMaxSealedBytes) return bad("the sealed row is " + std::to_string(sealed.size()) + " bytes");
  BioPtr in(BIO_new_mem_buf(sealed.data(), static_cast<int>(sealed.size())));
  if (!in) return fail(Errc::internal, "escrow: BIO_new_mem_buf failed: " + openssl_error());
  CmsPtr cms(PEM_read_bio_CMS(in.get(), nullptr, nullptr, nullptr));
  if (!cms) {
    openssl_error();  // drain the queue
    return bad("not a PEM CMS envelope");
  }
  // Only the authenticated envelope is accepted: a plain EnvelopedData (CBC, no tag) put in
  // the row's place would decrypt without proving it is ours.
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_id_smime_ct_authEnvelopedData) {
    return bad("the CMS envelope is not AuthEnvelopedData");
  }
  // Without authenticated attributes the content type is not covered by the tag (RFC 5083
  // 2.1): ours is always id-data, anything else was changed.
  if (const ASN1_OBJECT* type = CMS_get0_eContentType(cms.get()); type == nullptr || OBJ_obj2nid(type) != NID_pkcs7_data) {
    return bad("the envelope's content type is not id-data");
  }
  const std::string id = escrow_master_key_id(master_key);
  std::string wanted;
  if (auto* ris = CMS_get0_RecipientInfos(cms.get()); ris != nullptr) {
    for (int i = 0; i < sk_CMS_RecipientInfo_num(ris); ++i) {
      CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(ris, i);
      ASN1_OCTET_STRING* kid = nullptr;
      if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_KEK ||
          CMS_RecipientInfo_kekri_get0_id(ri, nullptr, &kid, nullptr, nullptr, nullptr) != 1 || kid == nullptr) {
        continue;
      }
      const std::string found(reinterpret_cast<const char*>(ASN1_STRING_get0_data(kid)),
                              static_cast<std::size_t>(ASN1_STRING_length(kid)));
      if (found == id) {
        wanted.clear();
        break;
      }
      wanted = found;
    }
  }
  if (!wanted.empty()) {
    return bad("the row was wrapped by master key " + wanted + ", escrow.key is " + id +
               " (a rotated or replaced escrow.key)");
  }
  // The key is copied by CMS_decrypt_set1_key; the id picks the recipient.
  if (CMS_decrypt_set1_key(cms.get(), const_cast<unsigned char*>(bytes(master_key)), kKeyBytes,
                           reinterpret_cast<const unsigned char*>(id.data()), id.size()) != 1) {
    openssl_error();
    return bad("does not decrypt: no recipient for escrow.key " + id + " (wrong escrow.key)");
  }
  // The plaintext's buffer is cleared when freed (secure-heap memory BIO).
  BioPtr out(BIO_new(BIO_s_secmem()));
  if (!out) return fail(Errc::internal, "escrow: BIO_new failed: " + openssl_error());
  if (CMS_decrypt(cms.get(), nullptr, nullptr, nullptr, out.get(), CMS_BINARY) != 1) {
    openssl_error();
    return bad("does not decrypt (a changed row, or a wrong escrow.key)");
  }
  auto content = read_bio(out.get(), kMaxSealedBytes);
  if (!content) return fail(content.error());
  const std::string expected_prefix = std::string(node_id) + "\n";
  const bool bound = content->size() == expected_prefix.size() + kKeyBytes && content->starts_with(expected_prefix);
  const Wiped wipe_content{*content};
  if (!bound) return bad("does not decrypt for this node (the row belongs to another node)");
  return content->substr(expected_prefix.size());
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
