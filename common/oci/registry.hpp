// A client of the OCI distribution API v2 (distribution-spec 1.1) over our HttpClient: blob
// HEAD/upload (POST then PUT, or chunked PATCH), manifest PUT/GET, blobs streamed into files
// with the sha256 checked while downloading and resumed with Range. Bearer-token (realm
// challenge) or basic auth; 5xx, 429 and connection errors are retried with backoff on the
// injected Clock. Every size is capped. Used by cairn-module push and the agent's fetch.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::oci {

inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::size_t kMaxManifestBytes = 4 << 20;  // distribution-spec: 4 MiB

// REGISTRY/REPO[:TAG][@sha256:HEX]. REGISTRY is host[:port] (the first path element, which
// must contain '.' or ':' or be "localhost"); REPO is lower-case path components.
struct Reference {
  std::string registry;
  std::string repository;
  std::string tag;     // may be empty when digest is set
  std::string digest;  // "sha256:<hex>" or empty
  [[nodiscard]] const std::string& reference() const { return digest.empty() ? tag : digest; }
  [[nodiscard]] std::string str() const;
};
Result<Reference> parse_reference(std::string_view text);

struct Descriptor {
  std::string media_type;
  std::string digest;  // "sha256:<hex>"
  std::uint64_t size = 0;
  std::string artifact_type{};          // optional
  std::map<std::string, std::string> annotations{};  // optional
};
Json descriptor_json(const Descriptor& d);
// Errc::data for a missing field, a non-sha256 digest or a size over max_size.
Result<Descriptor> parse_descriptor(const Json& j, std::uint64_t max_size, std::string_view what);

struct FetchedManifest {
  std::string bytes;
  std::string media_type;  // Content-Type of the answer
  std::string digest;      // sha256 of bytes, checked against Docker-Content-Digest and a digest reference
};

struct RegistryOptions {
  std::string scheme = "https";  // "http" only for a registry on loopback (tests, --plain-http)
  TlsOptions tls{};              // used by make_registry_http
  std::string username{};        // basic auth, also presented to a token realm
  std::string password{};
  int attempts = 4;                             // tries per request on 5xx/429/connection errors
  std::chrono::milliseconds backoff{250};       // before the 2nd try; doubled, at most 8 s
  std::uint64_t chunk_size = 16ULL << 20;       // blobs up to this go in one PUT, larger in PATCHes
  std::uint64_t max_blob_bytes = 17ULL << 30;   // a descriptor claiming more is refused
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::seconds stall_timeout{30};       // a blob transfer stalled this long is retried
};

class Registry {
 public:
  // host: "127.0.0.1:5000" or "registry.example.com". http must outlive the Registry.
  Registry(HttpClient& http, std::string host, RegistryOptions options = {},
           const Clock& clock = SystemClock::instance());

  Result<bool> has_blob(const std::string& repo, const std::string& digest);
  // Uploads unless the registry has it already (HEAD). The file is hashed first, then sent in
  // one PUT or in chunk_size PATCHes; never held in memory whole.
  Result<Descriptor> push_blob_file(const std::string& repo, const std::filesystem::path& path,
                                    std::string media_type);
  Result<Descriptor> push_blob_bytes(const std::string& repo, std::string_view bytes, std::string media_type);
  // PUT /v2/REPO/manifests/REF. Returns its descriptor; subject_accepted is true when the
  // registry answered OCI-Subject (it maintains the referrers API itself).
  struct PutResult {
    Descriptor descriptor;
    bool subject_accepted = false;
  };
  Result<PutResult> put_manifest(const std::string& repo, const std::string& reference, std::string_view bytes,
                                 std::string media_type);
  // std::nullopt when the registry says 404 (no such tag or digest).
  Result<std::optional<FetchedManifest>> get_manifest(const std::string& repo, const std::string& reference);
  // GET /v2/REPO/referrers/DIGEST (OCI 1.1); std::nullopt when the registry lacks the API (404).
  Result<std::optional<FetchedManifest>> get_referrers(const std::string& repo, const std::string& digest);
  // A small blob into memory (at most max_bytes and d.size), digest checked.
  Result<std::string> get_blob_bytes(const std::string& repo, const Descriptor& d, std::size_t max_bytes);
  // A blob into dest: streamed into dest + ".partial" with the sha256 computed as it arrives,
  // resumed with Range after a dropped connection (also across runs), renamed to dest only
  // when size and sha256 match. Errc::data when the registry serves other bytes (truncated,
  // altered): the partial file is removed.
  Status fetch_blob(const std::string& repo, const Descriptor& d, const std::filesystem::path& dest);

  [[nodiscard]] const std::string& host() const { return host_; }
  [[nodiscard]] std::size_t retries() const { return retries_; }  // for tests and logs

 private:
  Result<HttpResponse> send(HttpRequest request, const std::string& repo);
  Result<HttpResponse> send_once(HttpRequest& request, const std::string& repo);
  Status authenticate(const HttpResponse& challenge, const std::string& repo);
  Result<Descriptor> upload(const std::string& repo, const Descriptor& d,
                            const std::function<Result<std::string>(std::uint64_t offset, std::uint64_t len)>& read);
  std::string url(std::string_view path) const;
  std::string absolute(const std::string& location) const;
  void back_off(int attempt);

  HttpClient& http_;
  std::string host_;
  RegistryOptions options_;
  const Clock& clock_;
  std::string authorization_;  // the header value in use ("Bearer ..." or "Basic ...")
  std::size_t retries_ = 0;
};

// The HttpClient for a registry (TLS options from RegistryOptions::tls).
std::unique_ptr<HttpClient> make_registry_http(const RegistryOptions& options);

}  // namespace cairn::oci
