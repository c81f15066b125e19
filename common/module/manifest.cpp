// Strict manifest parsing and its canonical form.
#include "common/module/manifest.hpp"

#include <algorithm>
#include <set>

namespace cairn::module {
namespace {

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool is_alnum(char c) { return is_lower_alnum(c) || (c >= 'A' && c <= 'Z'); }
bool is_hex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}
std::string shown(std::string_view s) {
  std::string out(s.substr(0, 80));
  if (s.size() > 80) out += "...";
  return "'" + out + "'";
}

const std::set<std::string, std::less<>> kKeys = {"format",  "name",   "version",  "priority",
                                                   "size",    "sha256", "fsverity", "dependencies"};

}  // namespace

Status validate_name(std::string_view name, std::string_view what) {
  const bool ok = !name.empty() && name.size() <= 64 && is_lower_alnum(name.front()) &&
                  std::all_of(name.begin(), name.end(),
                              [](char c) { return is_lower_alnum(c) || c == '.' || c == '_' || c == '-'; });
  if (!ok) {
    return fail(Errc::data, std::string(what) + " " + shown(name) + " is not a module name",
                "use 1-64 characters a-z 0-9 . _ -, starting with a letter or digit");
  }
  return {};
}

Status validate_version(std::string_view v) {
  const bool ok = !v.empty() && v.size() <= 64 && is_alnum(v.front()) &&
                  std::all_of(v.begin(), v.end(), [](char c) {
                    return is_alnum(c) || c == '.' || c == '_' || c == '+' || c == '~' || c == '-';
                  });
  if (!ok) {
    return fail(Errc::data, "version " + shown(v) + " is not a module version",
                "use 1-64 characters A-Z a-z 0-9 . _ + ~ -, starting with a letter or digit");
  }
  return {};
}

Status validate(const Manifest& m) {
  if (auto s = validate_name(m.name); !s) return s;
  if (auto s = validate_version(m.version); !s) return s;
  if (m.priority < kMinPriority || m.priority > kMaxPriority) {
    return fail(Errc::data, "priority " + std::to_string(m.priority) + " is out of range",
                "use " + std::to_string(kMinPriority) + ".." + std::to_string(kMaxPriority));
  }
  if (m.size == 0 || m.size > kMaxImageBytes) {
    return fail(Errc::data, "size " + std::to_string(m.size) + " is absurd for a module image",
                "an image has 1.." + std::to_string(kMaxImageBytes) + " bytes; the manifest is corrupt or hostile");
  }
  if (!is_hex64(m.sha256)) return fail(Errc::data, "sha256 " + shown(m.sha256) + " is not 64 lower-case hex digits");
  if (!is_hex64(m.fsverity)) {
    return fail(Errc::data, "fsverity " + shown(m.fsverity) + " is not 64 lower-case hex digits");
  }
  if (m.dependencies.size() > kMaxDependencies) {
    return fail(Errc::data, std::to_string(m.dependencies.size()) + " dependencies (at most " +
                                std::to_string(kMaxDependencies) + ")");
  }
  std::set<std::string_view> seen;
  for (const auto& d : m.dependencies) {
    if (auto s = validate_name(d, "dependency"); !s) return s;
    if (d == m.name) return fail(Errc::data, "module " + m.name + " depends on itself");
    if (!seen.insert(d).second) return fail(Errc::data, "dependency " + d + " is listed twice");
  }
  return {};
}

Result<Manifest> parse_manifest(std::string_view text, std::string_view what) {
  const std::string where(what);
  if (text.size() > kMaxManifestBytes) {
    return fail(Errc::data, where + ": " + std::to_string(text.size()) + " bytes (at most " +
                                std::to_string(kMaxManifestBytes) + ")");
  }
  auto parsed = decode_json<Manifest>(text, what, [&](const Json& j) -> Result<Manifest> {
    if (!j.is_object()) return fail(Errc::data, where + ": not a JSON object");
    for (const auto& [k, v] : j.items()) {
      if (!kKeys.contains(k)) return fail(Errc::data, where + ": unknown key '" + k + "'");
    }
    if (j.at("format").get<std::string>() != kManifestFormat) {
      return fail(Errc::data, where + ": format " + shown(j.at("format").get<std::string>()) + " is not " +
                                  std::string(kManifestFormat),
                  "this cairn understands only " + std::string(kManifestFormat) + " manifests");
    }
    Manifest m;
    m.name = j.at("name").get<std::string>();
    m.version = j.at("version").get<std::string>();
    const Json& prio = j.at("priority");
    const Json& size = j.at("size");
    if (!prio.is_number_integer()) return fail(Errc::data, where + ": priority is not an integer");
    if (!size.is_number_unsigned()) return fail(Errc::data, where + ": size is not a non-negative integer");
    const auto p = prio.get<std::int64_t>();
    if (p < kMinPriority || p > kMaxPriority) {
      return fail(Errc::data, where + ": priority " + std::to_string(p) + " is out of range");
    }
    m.priority = static_cast<int>(p);
    m.size = size.get<std::uint64_t>();
    m.sha256 = j.at("sha256").get<std::string>();
    m.fsverity = j.at("fsverity").get<std::string>();
    const Json& deps = j.at("dependencies");
    if (!deps.is_array()) return fail(Errc::data, where + ": dependencies is not a list");
    if (deps.size() > kMaxDependencies) return fail(Errc::data, where + ": too many dependencies");
    for (const auto& d : deps) m.dependencies.push_back(d.get<std::string>());
    std::sort(m.dependencies.begin(), m.dependencies.end());
    return m;
  });
  if (!parsed) return fail(parsed.error());
  Manifest m = std::move(*parsed);
  if (auto s = validate(m); !s) return fail(s.error().with_context(where));
  return m;
}

Json manifest_to_json(const Manifest& m) {
  std::vector<std::string> deps = m.dependencies;
  std::sort(deps.begin(), deps.end());
  return Json{{"format", kManifestFormat}, {"name", m.name},     {"version", m.version},
              {"priority", m.priority},    {"size", m.size},     {"sha256", m.sha256},
              {"fsverity", m.fsverity},    {"dependencies", deps}};
}

std::string canonical_bytes(const Manifest& m) { return dump_json(manifest_to_json(m)); }

Status check_image(const Manifest& m, const FileDigests& image) {
  if (image.size != m.size) {
    return fail(Errc::data, "size check failed: the image has " + std::to_string(image.size) +
                                " bytes, the manifest says " + std::to_string(m.size),
                "the image is truncated or not the one the manifest describes; fetch it again");
  }
  if (image.sha256 != m.sha256) {
    return fail(Errc::data, "sha256 check failed: the image hashes to " + image.sha256 + ", the manifest says " + m.sha256,
                "the image was altered or corrupted; fetch it again");
  }
  if (image.fsverity != m.fsverity) {
    return fail(Errc::data, "fs-verity digest check failed: the image measures sha256:" + image.fsverity +
                                ", the manifest says sha256:" + m.fsverity,
                "the image was altered or corrupted; fetch it again");
  }
  return {};
}

}  // namespace cairn::module
