// OCI distribution API v2 client. Spec: github.com/opencontainers/distribution-spec spec.md
// ("Pulling blobs", "Pushing blobs" monolithic and chunked, "Pushing manifests", "Listing
// referrers"); token auth: distribution/docs/spec/auth/token.md.
#include "common/oci/registry.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/fs.hpp"
#include "common/module/fsverity.hpp"

namespace cairn::oci {
namespace {

bool is_sha256_digest(std::string_view d) {
  return d.size() == 71 && d.starts_with("sha256:") &&
         std::all_of(d.begin() + 7, d.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], kAlphabet[(v >> 6) & 63], kAlphabet[v & 63]};
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], kAlphabet[(v >> 6) & 63], '='};
  }
  return out;
}

std::string url_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += ch;
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// WWW-Authenticate: Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"
std::map<std::string, std::string> parse_challenge_params(std::string_view s) {
  std::map<std::string, std::string> out;
  while (!s.empty()) {
    while (!s.empty() && (s.front() == ' ' || s.front() == ',')) s.remove_prefix(1);
    const auto eq = s.find('=');
    if (eq == std::string_view::npos) break;
    std::string key(s.substr(0, eq));
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
    s.remove_prefix(eq + 1);
    std::string value;
    if (!s.empty() && s.front() == '"') {
      s.remove_prefix(1);
      while (!s.empty() && s.front() != '"') {
        if (s.front() == '\\' && s.size() > 1) s.remove_prefix(1);
        value += s.front();
        s.remove_prefix(1);
      }
      if (!s.empty()) s.remove_prefix(1);
    } else {
      const auto end = s.find(',');
      value = std::string(s.substr(0, end));
      s.remove_prefix(end == std::string_view::npos ? s.size() : end);
    }
    out[key] = value;
  }
  return out;
}

bool retryable_status(long status) { return status >= 500 || status == 429 || status == 408; }

// The registry's error answer in one line: {"errors":[{"code","message"}]}.
std::string registry_error(const HttpResponse& r) {
  std::string out = "HTTP " + std::to_string(r.status);
  auto j = parse_json(r.body, "registry error");
  if (j && j->is_object() && j->contains("errors") && (*j)["errors"].is_array() && !(*j)["errors"].empty()) {
    const Json& e = (*j)["errors"][0];
    if (e.is_object()) {
      if (e.contains("code") && e["code"].is_string()) out += " " + e["code"].get<std::string>();
      if (e.contains("message") && e["message"].is_string()) out += ": " + e["message"].get<std::string>().substr(0, 200);
    }
  }
  return out;
}

}  // namespace

std::string Reference::str() const {
  std::string out = registry + "/" + repository;
  if (!tag.empty()) out += ":" + tag;
  if (!digest.empty()) out += "@" + digest;
  return out;
}

Result<Reference> parse_reference(std::string_view text) {
  const std::string input(text);
  auto bad = [&](const std::string& why) {
    return fail(Errc::usage, "'" + input.substr(0, 200) + "' is not a registry reference: " + why,
                "write REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:5000/cairn/tools:1.0");
  };
  if (text.empty() || text.size() > 512) return bad("empty or too long");
  Reference ref;
  const auto at = text.find('@');
  if (at != std::string_view::npos) {
    ref.digest = std::string(text.substr(at + 1));
    if (!is_sha256_digest(ref.digest)) return bad("the digest is not sha256:<64 hex>");
    text = text.substr(0, at);
  }
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) return bad("no registry host");
  ref.registry = std::string(text.substr(0, slash));
  if (ref.registry != "localhost" && ref.registry.find_first_of(".:") == std::string::npos) {
    return bad("the first element '" + ref.registry + "' is not a registry host");
  }
  std::string_view rest = text.substr(slash + 1);
  const auto colon = rest.rfind(':');
  if (colon != std::string_view::npos) {
    ref.tag = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
    const bool tag_ok = !ref.tag.empty() && ref.tag.size() <= 128 &&
                        (std::isalnum(static_cast<unsigned char>(ref.tag[0])) || ref.tag[0] == '_') &&
                        std::all_of(ref.tag.begin(), ref.tag.end(), [](char c) {
                          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
                        });
    if (!tag_ok) return bad("the tag is not [A-Za-z0-9_][A-Za-z0-9._-]{0,127}");
  }
  ref.repository = std::string(rest);
  const bool repo_ok = !ref.repository.empty() && ref.repository.size() <= 255 &&
                       std::all_of(ref.repository.begin(), ref.repository.end(), [](char c) {
                         return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                                c == '-' || c == '/';
                       }) &&
                       ref.repository.front() != '/' && ref.repository.back() != '/' &&
                       ref.repository.find("//") == std::string::npos &&
                       ref.repository.find("..") == std::string::npos;
  if (!repo_ok) return bad("the repository is not lower-case path components");
  if (ref.tag.empty() && ref.digest.empty()) return bad("no :TAG or @DIGEST");
  return ref;
}

Json descriptor_json(const Descriptor& d) {
  Json j = {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
  if (!d.artifact_type.empty()) j["artifactType"] = d.artifact_type;
  if (!d.annotations.empty()) j["annotations"] = d.annotations;
  return j;
}

Result<Descriptor> parse_descriptor(const Json& j, std::uint64_t max_size, std::string_view what) {
  const std::string where(what);
  if (!j.is_object()) return fail(Errc::data, where + ": not a descriptor object");
  Descriptor d;
  if (!j.contains("mediaType") || !j["mediaType"].is_string()) return fail(Errc::data, where + ": no mediaType");
  if (!j.contains("digest") || !j["digest"].is_string()) return fail(Errc::data, where + ": no digest");
  if (!j.contains("size") || !j["size"].is_number_unsigned()) {
    return fail(Errc::data, where + ": size is missing or not a non-negative integer");
  }
  d.media_type = j["mediaType"].get<std::string>().substr(0, 255);
  d.digest = j["digest"].get<std::string>();
  d.size = j["size"].get<std::uint64_t>();
  if (!is_sha256_digest(d.digest)) return fail(Errc::data, where + ": digest is not sha256:<64 hex>");
  if (d.size > max_size) {
    return fail(Errc::data, where + ": size " + std::to_string(d.size) + " is over the cap of " + std::to_string(max_size),
                "the registry content is corrupt or hostile");
  }
  if (j.contains("artifactType") && j["artifactType"].is_string()) d.artifact_type = j["artifactType"].get<std::string>().substr(0, 255);
  if (j.contains("annotations") && j["annotations"].is_object()) {
    for (const auto& [k, v] : j["annotations"].items()) {
      if (v.is_string() && d.annotations.size() < 64) d.annotations[k.substr(0, 255)] = v.get<std::string>().substr(0, 1024);
    }
  }
  return d;
}

std::unique_ptr<HttpClient> make_registry_http(const RegistryOptions& options) { return make_http_client(options.tls); }

Registry::Registry(HttpClient& http, std::string host, RegistryOptions options, const Clock& clock)
    : http_(http), host_(std::move(host)), options_(std::move(options)), clock_(clock) {}

std::string Registry::url(std::string_view path) const { return options_.scheme + "://" + host_ + std::string(path); }

std::string Registry::absolute(const std::string& location) const {
  if (location.starts_with("http://") || location.starts_with("https://")) return location;
  if (location.starts_with("/")) return url(location);
  return url("/" + location);
}

void Registry::back_off(int attempt) {
  auto delay = options_.backoff * (1LL << std::min(attempt, 5));
  delay = std::min<std::chrono::milliseconds>(delay, std::chrono::milliseconds(8000));
  clock_.sleep_until(clock_.monotonic() + delay);
}

Status Registry::authenticate(const HttpResponse& challenge, const std::string& repo) {
  const auto header = challenge.header("www-authenticate").value_or("");
  const std::string scheme = header.substr(0, header.find(' '));
  std::string lower = scheme;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "basic") {
    if (options_.username.empty()) {
      return fail(Errc::refused, "registry " + host_ + " asks for a user name and password",
                  "pass --username and --password (or the agent's registry credentials)");
    }
    const std::string value = "Basic " + base64(options_.username + ":" + options_.password);
    if (authorization_ == value) return fail(Errc::refused, "registry " + host_ + " refused the user name and password");
    authorization_ = value;
    return {};
  }
  if (lower != "bearer") {
    return fail(Errc::refused, "registry " + host_ + " answered 401 with no usable challenge ('" + header.substr(0, 80) + "')");
  }
  auto params = parse_challenge_params(std::string_view(header).substr(scheme.size()));
  const std::string realm = params["realm"];
  if (!realm.starts_with("https://") && !(options_.scheme == "http" && realm.starts_with("http://"))) {
    return fail(Errc::refused, "registry " + host_ + ": token realm '" + realm.substr(0, 120) + "' is not https");
  }
  std::string scope = params.contains("scope") ? params["scope"] : "repository:" + repo + ":pull,push";
  std::string token_url = realm + (realm.find('?') == std::string::npos ? "?" : "&") +
                          "service=" + url_encode(params["service"]) + "&scope=" + url_encode(scope);
  HttpRequest req;
  req.url = token_url;
  req.connect_timeout = std::chrono::milliseconds(5000);
  req.total_timeout = options_.request_timeout;
  req.max_response_bytes = 64 * 1024;
  req.protocols = options_.scheme == "http" ? "http,https" : "https";
  if (!options_.username.empty()) {
    req.headers.emplace_back("Authorization", "Basic " + base64(options_.username + ":" + options_.password));
  }
  Result<HttpResponse> r = fail(Errc::unavailable, "no attempt");
  for (int attempt = 0; attempt < std::max(1, options_.attempts); ++attempt) {
    if (attempt > 0) back_off(attempt - 1), ++retries_;
    r = http_.send(req);
    if (r && !retryable_status(r->status)) break;
  }
  if (!r) return fail(r.error().with_context("registry token"));
  if (r->status == 401 || r->status == 403) {
    return fail(Errc::refused, "registry token service " + realm.substr(0, 120) + " refused the credentials (" +
                                   registry_error(*r) + ")",
                "check the registry user name and password");
  }
  if (r->status != 200) return fail(Errc::unavailable, "registry token service answered " + registry_error(*r));
  auto token = decode_json<std::string>(r->body, "registry token answer", [](const Json& j) -> std::string {
    if (j.contains("token")) return j.at("token").get<std::string>();
    return j.at("access_token").get<std::string>();
  });
  if (!token) return fail(token.error());
  if (token->empty() || token->size() > 16384) return fail(Errc::data, "registry token answer: empty or oversized token");
  const std::string value = "Bearer " + *token;
  if (authorization_ == value) return fail(Errc::refused, "registry " + host_ + " refused its own token for " + scope);
  authorization_ = value;
  return {};
}

Result<HttpResponse> Registry::send_once(HttpRequest& request, const std::string& repo) {
  // One 401 leads to one authentication and one more try; redirects (blob storage) are
  // followed for GET and HEAD, without our credentials when they leave the registry.
  bool authenticated = false;
  for (int hop = 0; hop < 5; ++hop) {
    HttpRequest r = request;
    const bool own_host = r.url.starts_with(url("/"));
    if (!authorization_.empty() && own_host) r.headers.emplace_back("Authorization", authorization_);
    auto answer = http_.send(r);
    if (!answer) return answer;
    if (answer->status == 401 && own_host && !authenticated) {
      if (auto s = authenticate(*answer, repo); !s) return fail(s.error());
      authenticated = true;
      continue;
    }
    if ((answer->status == 301 || answer->status == 302 || answer->status == 303 || answer->status == 307 ||
         answer->status == 308) &&
        (request.method == "GET" || request.method == "HEAD")) {
      auto location = answer->header("location");
      if (!location) return answer;
      request.url = absolute(*location);
      continue;
    }
    return answer;
  }
  return fail(Errc::unavailable, request.method + " " + request.url + ": too many redirects or challenges");
}

Result<HttpResponse> Registry::send(HttpRequest request, const std::string& repo) {
  if (request.total_timeout == HttpRequest{}.total_timeout) request.total_timeout = options_.request_timeout;
  request.protocols = options_.scheme;
  Result<HttpResponse> last = fail(Errc::unavailable, "no attempt");
  for (int attempt = 0; attempt < std::max(1, options_.attempts); ++attempt) {
    if (attempt > 0) {
      back_off(attempt - 1);
      ++retries_;
    }
    HttpRequest copy = request;
    last = send_once(copy, repo);
    if (!last) {
      if (last.error().code != Errc::unavailable) return last;  // refused, data, config: final
      continue;
    }
    if (!retryable_status(last->status)) return last;
  }
  if (!last) return fail(last.error().code, last.error().message + " (after " + std::to_string(options_.attempts) + " tries)", last.error().hint);
  return fail(Errc::unavailable,
              request.method + " " + request.url + ": " + registry_error(*last) + " (after " +
                  std::to_string(options_.attempts) + " tries)",
              "the registry is failing; retry later");
}

Result<bool> Registry::has_blob(const std::string& repo, const std::string& digest) {
  HttpRequest req;
  req.method = "HEAD";
  req.url = url("/v2/" + repo + "/blobs/" + digest);
  auto r = send(req, repo);
  if (!r) return fail(r.error());
  if (r->status == 200) return true;
  if (r->status == 404) return false;
  return fail(Errc::unavailable, "HEAD blob " + digest + " in " + host_ + "/" + repo + ": " + registry_error(*r));
}

Result<Descriptor> Registry::upload(const std::string& repo, const Descriptor& d,
                                    const std::function<Result<std::string>(std::uint64_t, std::uint64_t)>& read) {
  auto exists = has_blob(repo, d.digest);
  if (!exists) return fail(exists.error());
  if (*exists) return d;
  const std::string what = "upload of " + d.digest + " to " + host_ + "/" + repo;
  // Each request is retried on 5xx by send(). An upload session the registry no longer
  // knows or whose offset went wrong (404, 416, 400 after a half-applied chunk) is
  // abandoned and the blob sent again in a new session, up to `attempts` sessions.
  auto session_lost = [](long status) { return status == 404 || status == 416 || status == 400; };
  Error last{Errc::unavailable, what + ": no attempt", {}};
  for (int attempt = 0; attempt < std::max(1, options_.attempts); ++attempt) {
    if (attempt > 0) {
      back_off(attempt - 1);
      ++retries_;
    }
    HttpRequest start;
    start.method = "POST";
    start.url = url("/v2/" + repo + "/blobs/uploads/");
    auto started = send(start, repo);
    if (!started) return fail(started.error().with_context(what));
    if (started->status != 202 || !started->header("location")) {
      return fail(started->status == 401 || started->status == 403 ? Errc::refused : Errc::unavailable,
                  what + ": starting the upload: " + registry_error(*started), "check the repository name and your rights");
    }
    std::string location = absolute(*started->header("location"));
    bool lost = false;
    std::uint64_t offset = 0;
    const bool chunked = d.size > options_.chunk_size;
    const auto long_timeout = std::chrono::milliseconds(std::max<std::int64_t>(options_.request_timeout.count(), 600000));
    while (chunked && offset < d.size) {
      const std::uint64_t len = std::min(options_.chunk_size, d.size - offset);
      auto bytes = read(offset, len);
      if (!bytes) return fail(bytes.error());
      HttpRequest patch;
      patch.method = "PATCH";
      patch.url = location;
      patch.body = std::move(*bytes);
      patch.total_timeout = long_timeout;
      patch.stall_timeout = options_.stall_timeout;
      patch.headers = {{"Content-Type", "application/octet-stream"},
                       {"Content-Range", std::to_string(offset) + "-" + std::to_string(offset + len - 1)}};
      auto answered = send(patch, repo);
      if (!answered) return fail(answered.error().with_context(what));
      if (session_lost(answered->status)) {
        last = Error{Errc::unavailable, what + ": chunk at " + std::to_string(offset) + ": " + registry_error(*answered), {}};
        lost = true;
        break;
      }
      if (answered->status != 202 || !answered->header("location")) {
        return fail(answered->status == 401 || answered->status == 403 ? Errc::refused : Errc::unavailable,
                    what + ": chunk at " + std::to_string(offset) + ": " + registry_error(*answered));
      }
      location = absolute(*answered->header("location"));
      offset += len;
    }
    if (lost) continue;
    HttpRequest put;
    put.method = "PUT";
    put.url = location + (location.find('?') == std::string::npos ? "?" : "&") + "digest=" + url_encode(d.digest);
    put.total_timeout = long_timeout;
    put.stall_timeout = options_.stall_timeout;
    put.headers = {{"Content-Type", "application/octet-stream"}};
    if (!chunked) {
      auto bytes = read(0, d.size);
      if (!bytes) return fail(bytes.error());
      put.body = std::move(*bytes);
    }
    auto done = send(put, repo);
    if (!done) return fail(done.error().with_context(what));
    if (done->status == 201) return d;
    if (session_lost(done->status)) {
      last = Error{Errc::unavailable, what + ": " + registry_error(*done), {}};
      continue;
    }
    return fail(done->status == 401 || done->status == 403 ? Errc::refused : Errc::data, what + ": " + registry_error(*done),
                "the registry did not accept the blob (a digest mismatch means the file changed while being sent)");
  }
  return fail(last);
}

Result<Descriptor> Registry::push_blob_file(const std::string& repo, const std::filesystem::path& path,
                                            std::string media_type) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail(Errc::io, path.string() + ": " + std::strerror(errno));
  module::Sha256Stream sha;
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errc::io, path.string() + ": read: " + std::strerror(errno));
    if (n == 0) break;
    sha.update(buf.data(), static_cast<std::size_t>(n));
    if (sha.size() > options_.max_blob_bytes) return fail(Errc::data, path.string() + ": larger than the blob cap");
  }
  Descriptor d{std::move(media_type), "", sha.size()};
  d.digest = "sha256:" + sha.finish_hex();
  const int raw = fd.get();
  return upload(repo, d, [&](std::uint64_t offset, std::uint64_t len) -> Result<std::string> {
    std::string out(len, '\0');
    std::size_t got = 0;
    while (got < len) {
      const ssize_t n = ::pread(raw, out.data() + got, len - got, static_cast<off_t>(offset + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fail(Errc::io, path.string() + ": changed while being uploaded");
      got += static_cast<std::size_t>(n);
    }
    return out;
  });
}

Result<Descriptor> Registry::push_blob_bytes(const std::string& repo, std::string_view bytes, std::string media_type) {
  module::Sha256Stream sha;
  sha.update(bytes);
  Descriptor d{std::move(media_type), "sha256:" + sha.finish_hex(), bytes.size()};
  return upload(repo, d, [&](std::uint64_t offset, std::uint64_t len) -> Result<std::string> {
    return std::string(bytes.substr(offset, len));
  });
}

Result<Registry::PutResult> Registry::put_manifest(const std::string& repo, const std::string& reference,
                                                   std::string_view bytes, std::string media_type) {
  if (bytes.size() > kMaxManifestBytes) return fail(Errc::data, "manifest larger than 4 MiB");
  HttpRequest req;
  req.method = "PUT";
  req.url = url("/v2/" + repo + "/manifests/" + reference);
  req.body = std::string(bytes);
  req.headers = {{"Content-Type", media_type}};
  auto r = send(req, repo);
  if (!r) return fail(r.error());
  if (r->status != 201) {
    return fail(r->status == 401 || r->status == 403 ? Errc::refused : Errc::data,
                "PUT manifest " + host_ + "/" + repo + ":" + reference + ": " + registry_error(*r),
                "check the repository name, your rights and the manifest");
  }
  PutResult out;
  out.descriptor = Descriptor{std::move(media_type), "sha256:" + sha256_hex(bytes), bytes.size()};
  out.subject_accepted = r->header("oci-subject").has_value();
  return out;
}

namespace {
Result<std::optional<FetchedManifest>> read_manifest_answer(const Result<HttpResponse>& r, const std::string& what,
                                                            const std::string& expected_digest) {
  if (!r) return fail(r.error());
  if (r->status == 404) return std::optional<FetchedManifest>{};
  if (r->status == 401 || r->status == 403) return fail(Errc::refused, what + ": " + registry_error(*r), "check the registry credentials");
  if (r->status != 200) return fail(Errc::unavailable, what + ": " + registry_error(*r));
  FetchedManifest m;
  m.bytes = r->body;
  m.media_type = r->header("content-type").value_or("");
  module::Sha256Stream sha;
  sha.update(m.bytes);
  m.digest = "sha256:" + sha.finish_hex();
  if (!expected_digest.empty() && m.digest != expected_digest) {
    return fail(Errc::data, what + ": the answer hashes to " + m.digest + ", not the requested " + expected_digest,
                "the registry serves altered content");
  }
  if (auto d = r->header("docker-content-digest"); d && is_sha256_digest(*d) && *d != m.digest) {
    return fail(Errc::data, what + ": the answer hashes to " + m.digest + " but the registry says " + *d,
                "the transfer or the registry is corrupt; retry");
  }
  return std::optional<FetchedManifest>(std::move(m));
}
}  // namespace

Result<std::optional<FetchedManifest>> Registry::get_manifest(const std::string& repo, const std::string& reference) {
  HttpRequest req;
  req.url = url("/v2/" + repo + "/manifests/" + reference);
  req.max_response_bytes = kMaxManifestBytes;
  req.headers = {{"Accept", std::string(kOciManifest) + ", " + std::string(kOciIndex)}};
  return read_manifest_answer(send(req, repo), "GET manifest " + host_ + "/" + repo + ":" + reference,
                              is_sha256_digest(reference) ? reference : "");
}

Result<std::optional<FetchedManifest>> Registry::get_referrers(const std::string& repo, const std::string& digest) {
  HttpRequest req;
  req.url = url("/v2/" + repo + "/referrers/" + digest);
  req.max_response_bytes = kMaxManifestBytes;
  req.headers = {{"Accept", std::string(kOciIndex)}};
  auto r = send(req, repo);
  if (r && r->status != 200 && r->status != 401 && r->status != 403 && !retryable_status(r->status)) {
    return std::optional<FetchedManifest>{};  // 404 (registry 2.8), 400, 405: no referrers API
  }
  return read_manifest_answer(r, "GET referrers " + host_ + "/" + repo + "@" + digest, "");
}

Result<std::string> Registry::get_blob_bytes(const std::string& repo, const Descriptor& d, std::size_t max_bytes) {
  const std::string what = "blob " + d.digest + " from " + host_ + "/" + repo;
  if (d.size > max_bytes) {
    return fail(Errc::data, what + ": " + std::to_string(d.size) + " bytes, over the cap of " + std::to_string(max_bytes));
  }
  HttpRequest req;
  req.url = url("/v2/" + repo + "/blobs/" + d.digest);
  req.max_response_bytes = std::max<std::size_t>(static_cast<std::size_t>(d.size), 64 * 1024);  // room for an error body
  auto r = send(req, repo);
  if (!r) return fail(r.error().with_context(what));
  if (r->status != 200) {
    return fail(r->status == 401 || r->status == 403 ? Errc::refused : Errc::unavailable, what + ": " + registry_error(*r));
  }
  module::Sha256Stream sha;
  sha.update(r->body);
  const std::string got = "sha256:" + sha.finish_hex();
  if (r->body.size() != d.size || got != d.digest) {
    return fail(Errc::data, what + ": received " + std::to_string(r->body.size()) + " bytes hashing to " + got,
                "the registry serves altered or truncated content");
  }
  return r->body;
}

Status Registry::fetch_blob(const std::string& repo, const Descriptor& d, const std::filesystem::path& dest) {
  const std::string what = "blob " + d.digest + " from " + host_ + "/" + repo;
  if (d.size > options_.max_blob_bytes) {
    return fail(Errc::data, what + ": " + std::to_string(d.size) + " bytes is over the cap", "the manifest is corrupt or hostile");
  }
  const std::filesystem::path partial = dest.string() + ".partial";
  UniqueFd fd(::open(partial.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return fail(Errc::io, partial.string() + ": " + std::strerror(errno), "check the destination directory");
  module::Sha256Stream sha;
  std::uint64_t have = 0;
  {  // a previous run's partial download: hash what is there and resume after it
    struct stat st {};
    ::fstat(fd.get(), &st);
    if (static_cast<std::uint64_t>(st.st_size) > d.size) {
      if (::ftruncate(fd.get(), 0) != 0) return fail(Errc::io, partial.string() + ": truncate: " + std::strerror(errno));
    } else {
      std::vector<char> buf(1 << 20);
      for (;;) {
        const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(Errc::io, partial.string() + ": read: " + std::strerror(errno));
        if (n == 0) break;
        sha.update(buf.data(), static_cast<std::size_t>(n));
        have += static_cast<std::uint64_t>(n);
      }
    }
  }
  // What arrived is written in pieces of kWriteBuffer, not per curl chunk (~16 KiB): the page
  // cache then holds the image in large folios, and verify copies it out 2-4x cheaper
  // (tools/bench/verify --write-kib). `have` counts the bytes hashed, `written` those on disk.
  constexpr std::size_t kWriteBuffer = std::size_t{1} << 20;
  std::string pending;
  pending.reserve(kWriteBuffer);
  std::uint64_t written = have;
  const auto flush = [&]() -> std::optional<Error> {
    std::size_t done = 0;
    while (done < pending.size()) {
      const ssize_t n = ::pwrite(fd.get(), pending.data() + done, pending.size() - done, static_cast<off_t>(written + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error{Errc::io, partial.string() + ": write: " + std::strerror(errno), "check free space"};
      done += static_cast<std::size_t>(n);
    }
    written += pending.size();
    pending.clear();
    return std::nullopt;
  };
  auto discard = [&](Error e) -> Status {
    pending.clear();
    fd.reset();
    std::error_code ec;
    std::filesystem::remove(partial, ec);
    return fail(std::move(e));
  };
  Error last{Errc::unavailable, what + ": no attempt", {}};
  for (int attempt = 0; attempt < std::max(1, options_.attempts) && have < d.size; ++attempt) {
    if (attempt > 0) {
      back_off(attempt - 1);
      ++retries_;
    }
    HttpRequest req;
    req.url = url("/v2/" + repo + "/blobs/" + d.digest);
    if (have > 0) req.headers.emplace_back("Range", "bytes=" + std::to_string(have) + "-");
    // A registry ignoring the Range sends the whole blob again (200): that is allowed here, and
    // the sink refuses anything past the descriptor's size.
    req.max_response_bytes = static_cast<std::size_t>(d.size) + 1;
    req.total_timeout = std::chrono::hours(6);
    req.stall_timeout = options_.stall_timeout;
    req.protocols = options_.scheme;
    std::optional<Error> sink_error;
    bool first_chunk = true;
    req.body_sink = [&](long status, std::string_view chunk) -> bool {
      if (first_chunk) {
        first_chunk = false;
        if (status == 200 && have > 0) {  // the server ignored the Range: start over
          if (::ftruncate(fd.get(), 0) != 0) {
            sink_error = Error{Errc::io, partial.string() + ": truncate: " + std::strerror(errno), {}};
            return false;
          }
          sha = module::Sha256Stream();
          have = 0;
          written = 0;
          pending.clear();
        }
      }
      if (have + chunk.size() > d.size) {
        sink_error = Error{Errc::data, what + ": the registry sends more than the " + std::to_string(d.size) + " bytes of the descriptor",
                           "the registry content does not match the manifest"};
        return false;
      }
      pending.append(chunk);
      sha.update(chunk);
      have += chunk.size();
      if (pending.size() >= kWriteBuffer) {
        if (auto e = flush()) {
          sink_error = std::move(*e);
          return false;
        }
      }
      return true;
    };
    HttpRequest once = req;
    auto r = send_once(once, repo);
    if (sink_error) return sink_error->code == Errc::data ? discard(*sink_error) : fail(*sink_error);
    // What arrived is on disk before a retry resumes after it (or the file is renamed).
    if (auto e = flush()) return fail(std::move(*e));
    if (!r) {
      last = r.error().with_context(what);
      if (last.code != Errc::unavailable) return fail(last);
      continue;  // dropped connection or stall: resume from `have`
    }
    if (r->status == 416) {
      return discard(Error{Errc::data, what + ": truncated: the registry has " + std::to_string(have) + " of the " + std::to_string(d.size) + " bytes",
                           "the registry content is damaged; push the module again"});
    }
    if (r->status == 401 || r->status == 403) return fail(Errc::refused, what + ": " + registry_error(*r), "check the registry credentials");
    if (r->status == 404) return fail(Errc::unavailable, what + ": not in the registry (404)", "push the module again");
    if (r->status != 200 && r->status != 206) {
      last = Error{Errc::unavailable, what + ": " + registry_error(*r), "the registry is failing; retry later"};
      if (!retryable_status(r->status)) return fail(last);
      continue;
    }
    if (have < d.size) {
      last = Error{Errc::data, what + ": truncated: " + std::to_string(have) + " of " + std::to_string(d.size) + " bytes arrived",
                   "the registry content is damaged or the connection broke; retry"};
    }
  }
  if (have < d.size) {
    if (last.code == Errc::data) return discard(last);
    return fail(last);  // keep the partial file: the next run resumes it
  }
  const std::string got = "sha256:" + sha.finish_hex();
  if (got != d.digest) {
    return discard(Error{Errc::data, what + ": the received bytes hash to " + got + ", not " + d.digest,
                         "the registry serves altered content; do not use it"});
  }
  if (::fsync(fd.get()) != 0) return fail(Errc::io, partial.string() + ": fsync: " + std::strerror(errno));
  fd.reset();
  std::error_code ec;
  std::filesystem::rename(partial, dest, ec);
  if (ec) return fail(Errc::io, "rename " + partial.string() + " to " + dest.string() + ": " + ec.message());
  return fsync_dir(dest.parent_path().empty() ? std::filesystem::path(".") : dest.parent_path());
}

}  // namespace cairn::oci
