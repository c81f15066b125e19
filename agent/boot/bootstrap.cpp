#include "agent/boot/bootstrap.hpp"

#include <cctype>

#include "common/fs.hpp"
#include "common/json.hpp"

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
  } else {
    return fail(Errc::config, std::string(source) + ": unknown key '" + std::string(key) + "'",
                "known: control_url, ca_fingerprint, token, persist");
  }
  return {};
}

}  // namespace

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
    } else if (key == "debug" || key == "id") {
      continue;  // cairn.debug= is read by /init, cairn.id= by the identity cascade
    } else {
      return fail(Errc::config, "kernel command line: unknown option cairn." + std::string(key),
                  "known: cairn.control=, cairn.ca=, cairn.token=, cairn.persist=, cairn.id=, cairn.debug=");
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
  auto doc = parse_json(json, kFwCfgSource);
  if (!doc) {
    return fail(Errc::config, std::string(kFwCfgSource) + ": " + doc.error().message,
                "give a JSON object with control_url, ca_fingerprint, token, persist");
  }
  if (!doc->is_object()) {
    return fail(Errc::config, std::string(kFwCfgSource) + " is not a JSON object",
                "give a JSON object with control_url, ca_fingerprint, token, persist");
  }
  Bootstrap b;
  for (const auto& [key, value] : doc->items()) {
    if (!value.is_string()) {
      return fail(Errc::config, std::string(kFwCfgSource) + ": " + key + " is not a string", "quote the value");
    }
    if (auto ok = set_field(b, key, value.get<std::string>(), kFwCfgSource); !ok) return fail(ok.error());
  }
  return b;
}

Bootstrap merge(Bootstrap high, const Bootstrap& low) {
  if (!high.control_url) high.control_url = low.control_url;
  if (!high.ca_fingerprint) high.ca_fingerprint = low.ca_fingerprint;
  if (!high.token) high.token = low.token;
  if (!high.persist) high.persist = low.persist;
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
  return used;
}

}  // namespace cairn::agent::boot
