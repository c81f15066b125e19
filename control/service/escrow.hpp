// POST /v1/persist/escrow-key (issue 15): the /persist volume key of a node that has no TPM and
// is configured for escrow. Only over mTLS with the node's own certificate, so a node gets its
// own key and no other. The key is made on the first call (32 bytes from the CSPRNG) and kept
// encrypted at rest as an OpenSSL CMS envelope (RFC 5083 AuthEnvelopedData, AES-256-GCM) whose
// content key is wrapped (RFC 3394 AES key wrap, a KEKRecipientInfo) by the escrow master key of
// the state dir (escrow.key, 0600, made when the service starts without one). The envelope's
// content is the node id and the key, checked after decryption, so a row copied to another
// node's id is refused. This file is the only one that speaks CMS.
// Answer: {"node_id": "...", "key": "<64 hex digits>"}.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/json.hpp"
#include "common/result.hpp"
#include "control/api_error.hpp"

namespace cairn::control {

class Store;

// What the escrow needs of the store: the two Store methods of issue 15 (an adapter over
// Store in escrow.cpp; an in-memory one in the tests).
class EscrowKeyStore {
 public:
  virtual ~EscrowKeyStore() = default;
  virtual Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) = 0;
  virtual Result<std::optional<std::string>> find(std::string_view node_id) = 0;
};
std::unique_ptr<EscrowKeyStore> escrow_key_store(Store& store);

// The escrow master key file: read it, or create it (0600) when absent.
Result<std::string> load_or_create_escrow_master_key(const std::filesystem::path& file);

class EscrowKeys {
 public:
  EscrowKeys(EscrowKeyStore& store, std::string master_key) : store_(store), master_key_(std::move(master_key)) {}
  // The node's key (hex), created on the first call. The node id comes from its verified
  // certificate (AuthorizedNode), never from the request body.
  ApiResult<Json> key_for(std::string_view node_id);

 private:
  EscrowKeyStore& store_;
  std::string master_key_;  // 32 bytes
};

// The KEK identifier a master key puts in the envelopes it wraps: "cairn-escrow-master:" and
// the first 16 hex digits of its SHA-256. Rows name the master key that can open them, so after
// a rotation an old row says which key it needs instead of failing to unwrap.
std::string escrow_master_key_id(std::string_view master_key);

// At-rest format: a PEM "CMS" block (ContentInfo of type id-ct-authEnvelopedData) whose content
// is node_id, "\n", then the 32 key bytes. Rows of the retired hand-made AES-GCM format
// ("v1:...", written only by test builds before this change) are refused with Errc::data,
// never read.
Result<std::string> seal_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view key);
Result<std::string> open_escrow_key(std::string_view master_key, std::string_view node_id, std::string_view sealed);

}  // namespace cairn::control
