// The module manifest: what a signed module claims about its image (name, version, priority,
// size, sha256, fs-verity digest, dependencies). Parsed strictly: unknown keys, wrong types,
// bad names and absurd sizes are refused. Its canonical bytes (compact JSON, keys sorted) are
// what a signature covers, so a re-formatted file still verifies and any changed value does not.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/module/fsverity.hpp"
#include "common/result.hpp"

namespace cairn::module {

inline constexpr std::uint64_t kMaxImageBytes = 16ULL << 30;  // 16 GiB: larger is absurd
inline constexpr std::size_t kMaxManifestBytes = 64 * 1024;
inline constexpr std::size_t kMaxDependencies = 64;
inline constexpr int kMinPriority = 0;
inline constexpr int kMaxPriority = 1000;
inline constexpr std::string_view kManifestFormat = "cairn.module.v1";

struct Manifest {
  std::string name;       // [a-z0-9][a-z0-9._-]{0,63}: also a file name (extension-release.NAME)
  std::string version;    // [A-Za-z0-9][A-Za-z0-9._+~-]{0,63}
  int priority = 0;       // kMinPriority..kMaxPriority; higher wins in the union
  std::uint64_t size = 0; // image bytes, 1..kMaxImageBytes
  std::string sha256;     // 64 lower-case hex
  std::string fsverity;   // 64 lower-case hex (the digest `fsverity digest` prints after "sha256:")
  std::vector<std::string> dependencies;  // module names, sorted, no duplicates, not itself
};

// Errc::data naming the field and the rule when something is off.
Status validate_name(std::string_view name, std::string_view what = "name");
Status validate_version(std::string_view version);
Status validate(const Manifest& m);

// Text -> Manifest (validated). `what` names the input in errors ("build/foo.manifest.json").
Result<Manifest> parse_manifest(std::string_view text, std::string_view what = "module manifest");
Json manifest_to_json(const Manifest& m);
// The bytes a signature covers and the manifest file holds: compact JSON, keys sorted, one
// trailing newline excluded.
std::string canonical_bytes(const Manifest& m);

// Compares an image's digests with the manifest: Errc::data naming the first check that
// failed ("size", "sha256", "fs-verity digest") with both values.
Status check_image(const Manifest& m, const FileDigests& image);

}  // namespace cairn::module
