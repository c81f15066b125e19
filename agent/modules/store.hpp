// The agent's module store: content-addressed files under <persist>/cairn/modules/blobs/
// sha256/<hex> (images, module manifests, signatures), the list of attached modules
// (state.json, written atomically) and the garbage collection of blobs no attached module
// references.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::agent::modules {

// One attached module: what was verified and where its parts are in the store.
struct AttachedModule {
  std::string name;
  std::string version;
  std::int64_t priority = 0;
  bool required = false;
  std::vector<std::string> depends;
  std::string image_digest;      // sha256:<hex> of the EROFS image (its blob)
  std::string fsverity_digest;   // sha256:<hex> as `fsverity digest` prints it
  std::string manifest_digest;   // sha256:<hex> of the module manifest (its blob)
  std::string signature_digest;  // sha256:<hex> of the signature that verified (its blob)
  std::string key_id;            // the trusted key that signed it
  std::string source;            // OCI reference it came from, or the local path
  std::string verity;            // "enabled" or "unavailable: <why>"
  std::string attached_at;       // RFC 3339
};
Json to_json(const AttachedModule& m);
Result<AttachedModule> attached_module_from_json(const Json& j);

class ModuleStore {
 public:
  explicit ModuleStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  // blobs/sha256/<hex> of "sha256:<hex>"; Errc::data for anything but 64 lower-case hex.
  [[nodiscard]] Result<std::filesystem::path> blob_path(std::string_view digest) const;
  [[nodiscard]] bool has_blob(std::string_view digest) const;
  // Stores bytes under their sha256 (atomic write); returns "sha256:<hex>".
  Result<std::string> put_bytes(std::string_view bytes);
  Result<std::string> read_blob(std::string_view digest, std::size_t max_bytes) const;
  // Copies a local file in (streamed, hashed while copying); returns "sha256:<hex>".
  Result<std::string> put_file(const std::filesystem::path& src, std::uint64_t max_bytes);

  Result<std::vector<AttachedModule>> load_attached() const;  // no state.json: none attached
  Status save_attached(const std::vector<AttachedModule>& modules);

  // Removes every blob (and leftover .partial download) that no attached module references.
  // Returns the number of files removed.
  Result<std::size_t> collect_garbage(const std::vector<AttachedModule>& attached);

 private:
  std::filesystem::path dir_;
};

}  // namespace cairn::agent::modules
