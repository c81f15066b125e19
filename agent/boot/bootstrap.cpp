#include "agent/boot/bootstrap.hpp"

#include <algorithm>
#include <cctype>

#include <openssl/crypto.h>

#include "agent/persist/disk.hpp"
#include "agent/persist/tpm.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::agent::boot {
namespace {

constexpr std::size_t kMaxValueBytes = 1024;

Status check_value(std::string_view key, std::string_view value, std::string_view source) {
  if (value.empty()) {
    return fail(Errc::config, std::string(source) + ": " + std::string(key) + " is empty",
                "give it a value or remove it");
  }
  if (value.size() > kMaxValueBytes) {
    return fail(Errc::config, std::string(source) + ": " + std::string(key) + " is longer than " +
                                  std::to_string(kMaxValueBytes) + " bytes",
                "check the boot configuration");
  }
  for (const char c : value) {
    if (std::iscntrl(static_cast<unsigned char>(c)) != 0) {
      return fail(Errc::config, std::string(source) + ": " + std::string(key) + " holds a control character",
                  "check the boot configuration");
    }
  }
  if (key == "control_url" && !value.starts_with("https://")) {
    return fail(Errc::config, std::string(source) + ": control URL '" + std::string(value) + "' is not https://",
                "the control service is only spoken to over verified TLS; use https://HOST:PORT");
  }
  if (key == "base") {
    if (auto ref = parse_base_ref(value, source); !ref) return fail(ref.error());
  }
  if (key == "disk") {
    if (auto rule = persist::parse_disk_rule(value); !rule) {
      return fail(Errc::config, std::string(source) + ": " + rule.error().message, rule.error().hint);
    }
  }
  if (key == "pcrs") {
    if (auto pcrs = parse_pcr_list(value); !pcrs) {
      return fail(Errc::config, std::string(source) + ": " + pcrs.error().message, pcrs.error().hint);
    }
  }
  if (key == "persist" && value != "tmpfs" && value != "disk") {
    return fail(Errc::config, std::string(source) + ": persist is '" + std::string(value) + "'",
                "use tmpfs (diskless: nothing survives a reboot) or disk");
  }
  return {};
}

// Sets the field named `key` (the fw-cfg name; the command line maps onto these).
Status set_field(Bootstrap& b, std::string_view key, std::string value, std::string_view source) {
  if (auto ok = check_value(key, value, source); !ok) return ok;
  if (key == "ca_fingerprint") {
    // As `cairn-control init` prints it, or openssl's AA:BB:... form: 64 lower-case hex digits.
    std::string hex;
    for (const char c : value) {
      if (c != ':') hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return fail(Errc::config, std::string(source) + ": CA fingerprint '" + value + "' is not a SHA-256 in hex",
                  "copy the 'CA SHA-256' line that cairn-control init printed");
    }
    value = std::move(hex);
  }
  Value v{std::move(value), std::string(source)};
  if (key == "control_url") {
    b.control_url = std::move(v);
  } else if (key == "ca_fingerprint") {
    b.ca_fingerprint = std::move(v);
  } else if (key == "token") {
    b.token = std::move(v);
  } else if (key == "persist") {
    b.persist = std::move(v);
  } else if (key == "base") {
    b.base = std::move(v);
  } else if (key == "disk") {
    b.disk = std::move(v);
  } else if (key == "pcrs") {
    b.pcrs = std::move(v);
  } else {
    return fail(Errc::config, std::string(source) + ": unknown key '" + std::string(key) + "'",
                "known: control_url, ca_fingerprint, token, persist, base, disk, pcrs, labels");
  }
  return {};
}


Status check_labels(const Json& value, std::string_view source, Labels& out) {
  const std::string where = std::string(source) + ": labels";
  if (!value.is_object()) {
    return fail(Errc::config, where + " is not a JSON object", "give labels as {\"key\": \"value\", ...}");
  }
  if (value.size() > kMaxLabels) {
    return fail(Errc::config, where + " has " + std::to_string(value.size()) + " entries, at most " +
                                  std::to_string(kMaxLabels) + " allowed",
                "keep the labels the node needs at enrollment; control adds the token's own");
  }
  for (const auto& [key, v] : value.items()) {
    const bool key_ok = !key.empty() && key.size() <= kMaxLabelKeyBytes &&
                        std::all_of(key.begin(), key.end(), [](char c) {
                          return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                 c == '.' || c == '_' || c == '-' || c == '/';
                        });
    if (!key_ok) {
      return fail(Errc::config, where + ": key '" + key.substr(0, kMaxLabelKeyBytes) + "' is not a label key",
                  "use 1-63 characters a-z A-Z 0-9 . _ - /");
    }
    if (!v.is_string()) return fail(Errc::config, where + "." + key + " is not a string", "quote the value");
    const auto text = v.get<std::string>();
    if (text.size() > kMaxLabelValueBytes) {
      return fail(Errc::config, where + "." + key + " is longer than " + std::to_string(kMaxLabelValueBytes) + " bytes",
                  "shorten the label value");
    }
    if (std::any_of(text.begin(), text.end(), [](char c) { return std::iscntrl(static_cast<unsigned char>(c)) != 0; })) {
      return fail(Errc::config, where + "." + key + " holds a control character", "check the boot configuration");
    }
    out.values[key] = text;
  }
  out.source = std::string(source);
  return {};
}

// The JSON object of fw-cfg and user-data. `disk_settings`: persist and base may be set here
// (fw-cfg; user-data arrives after /init chose the persist mode, and may not unseal the base).
Result<Bootstrap> parse_config_object(std::string_view json, std::string_view source, bool disk_settings) {
  const std::string hint = "give a JSON object with control_url, ca_fingerprint, token, labels" +
                           std::string(disk_settings ? ", persist, base, disk, pcrs" : "");
  // parse_json names no byte of the document: a malformed one may hold the token.
  auto doc = parse_json(json, source);
  if (!doc) return fail(Errc::config, std::string(source) + ": not valid JSON", hint);
  if (!doc->is_object()) return fail(Errc::config, std::string(source) + " is not a JSON object", hint);
  Bootstrap b;
  for (const auto& [key, value] : doc->items()) {
    if (key == "labels") {
      Labels labels;
      if (auto ok = check_labels(value, source, labels); !ok) return fail(ok.error());
      b.labels = std::move(labels);
      continue;
    }
    if (!disk_settings && (key == "persist" || key == "base" || key == "disk" || key == "pcrs")) {
      return fail(Errc::config, std::string(source) + ": " + key + " cannot be set from user-data",
                  key != "base" ? "the persist mode, disk and PCRs are chosen by the boot artifact: set cairn.persist=, "
                                  "cairn.disk= and cairn.pcrs= on the kernel command line (the disk image's boot entry "
                                  "sets them)"
                                : "the base module is sealed by the boot artifact (cairn.base= on its command line)");
    }
    if (!value.is_string()) {
      return fail(Errc::config, std::string(source) + ": " + key.substr(0, 64) + " is not a string", "quote the value");
    }
    if (auto ok = set_field(b, key, value.get<std::string>(), source); !ok) return fail(ok.error());
  }
  return b;
}
}  // namespace

Result<BaseRef> parse_base_ref(std::string_view text, std::string_view source) {
  const auto hint = "give the base module as NAME@sha256:<64 hex>, the OCI manifest digest `cairn-module push` printed";
  const auto at = text.find('@');
  if (at == std::string_view::npos || at == 0) {
    return fail(Errc::config, std::string(source) + ": base '" + std::string(text) + "' is not NAME@sha256:<digest>", hint);
  }
  BaseRef ref{std::string(text.substr(0, at)), std::string(text.substr(at + 1))};
  const bool name_ok = ref.name.size() <= 64 && ref.name != "." && ref.name != ".." &&
                       std::all_of(ref.name.begin(), ref.name.end(), [](char c) {
                         return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
                       }) &&
                       ref.name.front() != '.' && ref.name.front() != '_' && ref.name.front() != '-';
  if (!name_ok) {
    return fail(Errc::config, std::string(source) + ": base module name '" + ref.name + "' is not a module name",
                "use 1-64 characters a-z 0-9 . _ -, starting with a letter or digit");
  }
  const std::string_view hex = std::string_view(ref.digest).substr(ref.digest.starts_with("sha256:") ? 7 : 0);
  if (!ref.digest.starts_with("sha256:") || hex.size() != 64 ||
      hex.find_first_not_of("0123456789abcdef") != std::string_view::npos) {
    return fail(Errc::config, std::string(source) + ": base digest '" + ref.digest + "' is not sha256:<64 lower-case hex>",
                hint);
  }
  return ref;
}

Result<Bootstrap> parse_kernel_cmdline(std::string_view cmdline) {
  if (cmdline.size() > kMaxCmdlineBytes) {
    return fail(Errc::config, "kernel command line longer than " + std::to_string(kMaxCmdlineBytes) + " bytes",
                "check the boot loader configuration");
  }
  Bootstrap b;
  std::size_t pos = 0;
  while (pos < cmdline.size()) {
    while (pos < cmdline.size() && std::isspace(static_cast<unsigned char>(cmdline[pos])) != 0) ++pos;
    std::size_t end = pos;
    while (end < cmdline.size() && std::isspace(static_cast<unsigned char>(cmdline[end])) == 0) ++end;
    const std::string_view word = cmdline.substr(pos, end - pos);
    pos = end;
    if (!word.starts_with("cairn.")) continue;
    const auto eq = word.find('=');
    const std::string_view key = word.substr(6, eq == std::string_view::npos ? std::string_view::npos : eq - 6);
    const std::string value = eq == std::string_view::npos ? std::string() : std::string(word.substr(eq + 1));
    std::string_view field;
    if (key == "control") {
      field = "control_url";
    } else if (key == "ca") {
      field = "ca_fingerprint";
    } else if (key == "token") {
      field = "token";
    } else if (key == "persist") {
      field = "persist";
    } else if (key == "base") {
      field = "base";
    } else if (key == "disk") {
      field = "disk";
    } else if (key == "pcrs") {
      field = "pcrs";
    } else if (key == "debug" || key == "retry" || key == "rounds" || key == "id") {
      continue;  // cairn.debug=, retry= and rounds= are read by /init, cairn.id= by the identity cascade
    } else {
      return fail(Errc::config, "kernel command line: unknown option cairn." + std::string(key),
                  "known: cairn.control=, cairn.ca=, cairn.token=, cairn.persist=, cairn.base=, cairn.disk=, cairn.pcrs=, "
                  "cairn.id=, "
                  "cairn.debug=, cairn.retry=, cairn.rounds=");
    }
    if (auto ok = set_field(b, field, value, kCmdlineSource); !ok) return fail(ok.error());
  }
  return b;
}

Result<Bootstrap> parse_fw_cfg_config(std::string_view json) {
  if (json.size() > kMaxFwCfgConfigBytes) {
    return fail(Errc::config, std::string(kFwCfgSource) + " is larger than " + std::to_string(kMaxFwCfgConfigBytes) + " bytes",
                "give a JSON object with control_url, ca_fingerprint, token, persist");
  }
  return parse_config_object(json, kFwCfgSource, true);
}

std::string user_data_source(std::string_view cloud) { return "user-data (" + std::string(cloud) + ")"; }

Result<std::optional<Bootstrap>> parse_user_data(std::string_view text, std::string_view cloud) {
  const std::string source = user_data_source(cloud);
  if (text.size() > kMaxUserDataConfigBytes) {
    return fail(Errc::config, source + " is larger than " + std::to_string(kMaxUserDataConfigBytes) + " bytes",
                "keep the Cairn configuration in user-data under 64 KiB");
  }
  std::string_view body = text;
  if (body.starts_with("\xEF\xBB\xBF")) body.remove_prefix(3);  // a UTF-8 byte order mark
  const auto first_line_end = body.find('\n');
  std::string_view first_line = body.substr(0, first_line_end);
  while (!first_line.empty() && (first_line.back() == '\r' || first_line.back() == ' ' || first_line.back() == '\t')) {
    first_line.remove_suffix(1);
  }
  if (first_line == kUserDataMarker) {
    body = first_line_end == std::string_view::npos ? std::string_view() : body.substr(first_line_end + 1);
  } else {
    std::size_t i = 0;
    while (i < body.size() && std::isspace(static_cast<unsigned char>(body[i])) != 0) ++i;
    if (i == body.size() || body[i] != '{') {
      // Not Cairn's: a cloud-config, a script, a MIME multipart for cloud-init images. A
      // cloud-config with a top-level cairn: key was meant for us, but reading it needs a
      // YAML parser the initramfs does not carry: say what to write instead.
      if (first_line.starts_with("#cloud-config")) {
        for (std::size_t pos = 0; pos < body.size();) {
          const auto end = body.find('\n', pos);
          const auto line = body.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
          if (line.starts_with("cairn:")) {
            return fail(Errc::config, source + ": a #cloud-config with a cairn: key is not read by Cairn",
                        "write the user-data as a first line #cairn-config followed by the JSON object "
                        "(control_url, ca_fingerprint, token, labels)");
          }
          if (end == std::string_view::npos) break;
          pos = end + 1;
        }
      }
      return std::optional<Bootstrap>();
    }
  }
  auto parsed = parse_config_object(body, source, false);
  if (!parsed) return fail(parsed.error());
  return std::optional<Bootstrap>(std::move(*parsed));
}

Bootstrap merge(Bootstrap high, const Bootstrap& low) {
  if (!high.control_url) high.control_url = low.control_url;
  if (!high.ca_fingerprint) high.ca_fingerprint = low.ca_fingerprint;
  if (!high.token) high.token = low.token;
  if (!high.persist) high.persist = low.persist;
  if (!high.base) high.base = low.base;
  if (!high.disk) high.disk = low.disk;
  if (!high.pcrs) high.pcrs = low.pcrs;
  if (!high.labels) high.labels = low.labels;
  high.notes.insert(high.notes.end(), low.notes.begin(), low.notes.end());
  return high;
}

Result<Bootstrap> read_bootstrap(const Root& root) {
  auto cmdline = read_file(root / "proc/cmdline", kMaxCmdlineBytes + 1);
  if (!cmdline) {
    return fail(Errc::config, "kernel command line: " + cmdline.error().message, "is /proc mounted?");
  }
  auto from_cmdline = parse_kernel_cmdline(*cmdline);
  if (!from_cmdline) return from_cmdline;
  auto fw_cfg = read_file_if_exists(root / kFwCfgConfigPath, kMaxFwCfgConfigBytes + 1);
  if (!fw_cfg) return fail(Errc::config, std::string(kFwCfgSource) + ": " + fw_cfg.error().message, "");
  if (!fw_cfg->has_value()) return from_cmdline;
  auto from_fw_cfg = parse_fw_cfg_config(**fw_cfg);
  if (!from_fw_cfg) return from_fw_cfg;
  return merge(std::move(*from_cmdline), *from_fw_cfg);
}

Result<Bootstrap> read_bootstrap(const Root& root, const identity::Config& identity, HttpClient& http,
                                 const Clock& clock) {
  auto local = read_bootstrap(root);
  if (!local) return local;
  auto found = identity::fetch_user_data(identity, http, clock);
  std::vector<std::string> notes;
  std::string failures;
  for (const auto& a : found.attempts) {
    notes.push_back("user-data " + a.cloud + ": " + std::string(identity::outcome_name(a.outcome)) + ", " + a.reason);
    if (a.outcome == identity::Outcome::failed) failures += (failures.empty() ? "" : "; ") + a.cloud + ": " + a.reason;
  }
  Bootstrap from_user_data;
  if (found.cloud) {
    auto parsed = parse_user_data(found.text, *found.cloud);
    // The document may hold the token: wipe our copy whatever it held.
    OPENSSL_cleanse(found.text.data(), found.text.size());
    if (!parsed) return fail(parsed.error());
    if (*parsed) {
      from_user_data = std::move(**parsed);
    } else {
      notes.push_back("user-data " + *found.cloud + ": not a Cairn configuration (no " + std::string(kUserDataMarker) +
                      " first line, not a JSON object): ignored");
    }
  }
  from_user_data.notes = std::move(notes);
  auto merged = merge(std::move(*local), from_user_data);
  if (!merged.control_url && !found.cloud && !failures.empty()) {
    return fail(Errc::unavailable, "bootstrap: no control URL, and the user-data could not be read (" + failures + ")",
                "the metadata server may not be reachable yet (retry), or give cairn.control= on the kernel command line");
  }
  return merged;
}

Result<Bootstrap> read_bootstrap(const AgentConfig& config, int attempts, const Clock& clock) {
  auto http = make_http_client();
  std::chrono::milliseconds delay{500};
  for (int attempt = 1;; ++attempt) {
    auto b = read_bootstrap(config.root, config.identity, *http, clock);
    if (b || b.error().code != Errc::unavailable || attempt >= attempts) return b;
    log::warn("boot.retry", {{"stage", "bootstrap"},
                             {"attempt", attempt + 1},
                             {"error", b.error().message},
                             {"next_attempt_ms", static_cast<std::int64_t>(delay.count())}});
    clock.sleep_until(clock.monotonic() + delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(4000));
  }
}

void forget_token(Bootstrap& bootstrap) {
  if (!bootstrap.token) return;
  OPENSSL_cleanse(bootstrap.token->value.data(), bootstrap.token->value.size());
  bootstrap.token.reset();
}

Bootstrap apply(AgentConfig& config, const Bootstrap& bootstrap) {
  const Value configured{"", "config file or flag"};
  Bootstrap used = bootstrap;
  if (!config.control_url.empty()) {
    used.control_url = Value{config.control_url, configured.source};
  } else if (bootstrap.control_url) {
    config.control_url = bootstrap.control_url->value;
  }
  if (!config.ca_fingerprint.empty() || !config.ca_file.empty()) {
    used.ca_fingerprint = Value{config.ca_fingerprint.empty() ? config.ca_file.string() : config.ca_fingerprint,
                                configured.source};
  } else if (bootstrap.ca_fingerprint) {
    config.ca_fingerprint = bootstrap.ca_fingerprint->value;
  }
  if (!used.persist) used.persist = Value{"tmpfs", "default"};
  if (config.persist.disk_configured) {
    used.disk = Value{config.persist.disk, configured.source};
  } else if (bootstrap.disk) {
    config.persist.disk = bootstrap.disk->value;
  } else {
    used.disk = Value{config.persist.disk, "default"};
  }
  if (config.persist.pcrs_configured) {
    used.pcrs = Value{persist::pcr_list(config.persist.pcrs), configured.source};
  } else if (bootstrap.pcrs) {
    config.persist.pcrs = *parse_pcr_list(bootstrap.pcrs->value);  // checked by set_field
  } else {
    used.pcrs = Value{persist::pcr_list(config.persist.pcrs), "default"};
  }
  if (bootstrap.labels) {
    // The config file's labels win key by key; the rest come from the bootstrap.
    for (const auto& [k, v] : bootstrap.labels->values) config.labels.try_emplace(k, v);
  }
  if (!config.labels.empty()) {
    Labels shown{config.labels, bootstrap.labels ? bootstrap.labels->source : "config file"};
    if (bootstrap.labels && shown.values != bootstrap.labels->values) shown.source += " and config file";
    used.labels = std::move(shown);
  }
  return used;
}

}  // namespace cairn::agent::boot
