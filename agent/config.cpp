#include "agent/config.hpp"

#include <algorithm>
#include <charconv>

#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/log.hpp"

namespace cairn::agent {
namespace {

constexpr std::size_t kMaxConfigBytes = 256 * 1024;

Status apply_file(const Json& j, const std::filesystem::path& path, AgentConfig& cfg) {
  try {
    if (!j.is_object()) return fail(Errc::config, path.string() + ": not a JSON object");
    const auto host_path = [&](const Json& value) {
      return config_file_path(cfg.root, path, value.get<std::string>());
    };
    if (auto it = j.find("persist_dir"); it != j.end()) cfg.persist_dir = host_path(*it);
    if (auto it = j.find("control_url"); it != j.end()) cfg.control_url = it->get<std::string>();
    if (auto it = j.find("ca_file"); it != j.end()) cfg.ca_file = host_path(*it);
    if (auto it = j.find("ca_fingerprint"); it != j.end()) cfg.ca_fingerprint = it->get<std::string>();
    if (auto it = j.find("token_file"); it != j.end()) cfg.token_file = host_path(*it);
    if (auto it = j.find("labels"); it != j.end()) cfg.labels = it->get<std::map<std::string, std::string>>();
    // modules (issue 14)
    if (auto it = j.find("modules"); it != j.end()) {
      const Json& m = *it;
      if (!m.is_object()) return fail(Errc::config, path.string() + ": \"modules\" is not an object");
      cfg.module_registry = m.value("registry", "");
      cfg.module_registry_plain_http = m.value("plain_http", false);
      if (auto c = m.find("credentials_file"); c != m.end()) cfg.module_registry_credentials = host_path(*c);
      if (auto t = m.find("trust"); t != m.end()) cfg.module_trust = *t;
      cfg.module_config_file = path;
      if (auto u = m.find("union"); u != m.end()) cfg.module_union = host_path(*u);
      cfg.module_upper = m.value("upper", "tmpfs");
      if (auto r = m.find("run_dir"); r != m.end()) cfg.module_run_dir = host_path(*r);
      if (auto k = m.find("policy_keys"); k != m.end()) cfg.module_policy_keys = *k;  // modules (h-modpolicy)
      if (auto r = m.find("policy_require_expiry"); r != m.end()) {  // modules (h-polexpiry)
        if (!r->is_boolean()) {
          return fail(Errc::config, path.string() + ": modules.policy_require_expiry is not true or false", "write true or false");
        }
        cfg.module_policy_require_expiry = r->get<bool>();
      }
      if (auto a = m.find("auto_apply"); a != m.end()) {  // modules (h-apply)
        if (!a->is_boolean()) {
          return fail(Errc::config, path.string() + ": modules.auto_apply is not true or false", "write true or false");
        }
        cfg.module_auto_apply = a->get<bool>();
        cfg.module_auto_apply_source = "config file " + path.string();
      }
      if (cfg.module_upper != "tmpfs" && cfg.module_upper != "persist") {
        return fail(Errc::config, path.string() + ": modules.upper '" + cfg.module_upper + "'", "use tmpfs or persist");
      }
      const auto host = cfg.module_registry.substr(0, cfg.module_registry.find('/'));
      if (cfg.module_registry_plain_http && !host.starts_with("127.0.0.1") && !host.starts_with("localhost") &&
          !host.starts_with("[::1]")) {
        return fail(Errc::config, path.string() + ": modules.plain_http for registry '" + host + "', which is not on loopback",
                    "speak https to a registry off this machine");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::config, path.string() + ": " + e.what(), "fix the value's type in the config file");
  }
  return {};
}

// tasks (issue 13, h-atasks): the "tasks" section.
Status apply_tasks_section(const Json& j, const std::filesystem::path& path, AgentConfig& cfg) {
  auto it = j.find("tasks");
  if (it == j.end()) return {};
  try {
    const Json& t = *it;
    if (!t.is_object()) return fail(Errc::config, path.string() + ": tasks: not a JSON object");
    if (auto v = t.find("max_concurrent"); v != t.end()) {
      const auto n = v->get<std::int64_t>();
      if (n < 0 || n > 64) {
        return fail(Errc::config, path.string() + ": tasks.max_concurrent " + std::to_string(n) + ": not in 0..64",
                    "0 leases no task; a few per core is plenty");
      }
      cfg.max_concurrent_tasks = static_cast<std::size_t>(n);
    }
    if (auto v = t.find("exec_allowlist"); v != t.end()) cfg.exec_allowlist = v->get<std::vector<std::string>>();
    if (auto v = t.find("allow_root_services"); v != t.end()) cfg.allow_root_services = v->get<bool>();
    if (auto v = t.find("stop_timeout_s"); v != t.end()) {
      cfg.task_stop_timeout = std::chrono::seconds(std::clamp<std::int64_t>(v->get<std::int64_t>(), 0, 3600));
    }
    if (auto v = t.find("services_dir"); v != t.end()) {
      cfg.services_dir = v->get<std::string>();
      if (!cfg.services_dir.starts_with("/") || cfg.services_dir.find("..") != std::string::npos) {
        return fail(Errc::config, path.string() + ": tasks.services_dir '" + cfg.services_dir + "': not an absolute path",
                    "e.g. /var/lib/cairn/services");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::config, path.string() + ": tasks: " + e.what(), "fix the value's type in the config file");
  }
  return {};
}

// persist (issue 15): the "persist" section.
Status apply_persist_section(const Json& j, const std::filesystem::path& path, PersistConfig& p) {
  const auto bad = [&](const std::string& what, const std::string& hint) {
    return fail(Errc::config, path.string() + ": persist." + what, hint);
  };
  if (!j.is_object()) return bad("section: not a JSON object", "\"persist\": {\"disk\": ..., \"key_source\": ...}");
  for (const auto& [key, value] : j.items()) {
    if (key == "disk" || key == "key_source" || key == "tcti" || key == "mapper_name") {
      if (!value.is_string() || value.get<std::string>().empty()) return bad(key + ": not a non-empty string", "see the agent config reference");
      const auto s = value.get<std::string>();
      if (key == "disk") p.disk = s;
      if (key == "disk") p.disk_configured = true;  // h-userdata
      if (key == "tcti") p.tcti = s;
      if (key == "mapper_name") p.mapper_name = s;
      if (key == "key_source") {
        if (s != "tpm" && s != "escrow") return bad("key_source '" + s + "': neither tpm nor escrow", "use \"tpm\" or \"escrow\"");
        p.key_source = s;
      }
    } else if (key == "min_size_mib") {
      if (!value.is_number_unsigned() || value.get<std::uint64_t>() < 64) return bad("min_size_mib: not a whole number >= 64", "e.g. 1024");
      p.min_size_mib = value.get<std::uint64_t>();
    } else if (key == "pcrs") {
      std::vector<int> pcrs;
      if (!value.is_array() || value.empty()) return bad("pcrs: not a list of PCR indices", "e.g. [7] or [0, 7]");
      for (const auto& v : value) {
        if (!v.is_number_integer() || v.get<int>() < 0 || v.get<int>() > 23) return bad("pcrs: " + dump_json(v) + " is not a PCR index 0-23", "e.g. [7]");
        pcrs.push_back(v.get<int>());
      }
      std::sort(pcrs.begin(), pcrs.end());
      pcrs.erase(std::unique(pcrs.begin(), pcrs.end()), pcrs.end());
      p.pcrs = std::move(pcrs);
      p.pcrs_configured = true;
    } else {
      return bad(key + ": unknown setting", "known: disk, min_size_mib, pcrs, key_source, tcti, mapper_name");
    }
  }
  return {};
}

}  // namespace

Result<std::vector<int>> parse_pcr_list(std::string_view text) {
  const auto bad = [&] {
    return fail(Errc::config, "PCR list '" + std::string(text.substr(0, 64)) + "' is not PCR indices 0-23 joined by '+'",
                "e.g. 7 or 7+8+9 (systemd's spelling)");
  };
  std::vector<int> pcrs;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const auto end = std::min(text.find_first_of("+,", pos), text.size());
    const auto item = text.substr(pos, end - pos);
    int n = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || n < 0 || n > 23) return bad();
    pcrs.push_back(n);
    pos = end + 1;
  }
  std::sort(pcrs.begin(), pcrs.end());
  pcrs.erase(std::unique(pcrs.begin(), pcrs.end()), pcrs.end());
  return pcrs;
}

std::filesystem::path config_file_path(const Root& root, const std::filesystem::path& config_file,
                                       std::string_view value) {
  if (value.empty()) return {};
  // An absolute path names a file of the node's host, so it goes through the root like every
  // host path. A relative one is relative to the config file's directory, which was itself
  // found under the root (or given with --config), so the file can ship beside its config.
  if (value.front() == '/') return root / value;
  return config_file.parent_path() / value;
}

void add_global_options(CLI::App& app, GlobalOptions& o) {
  app.add_option("--root", o.root, "host root for /proc, /sys, /etc and /persist (tests, chroots)");
  app.add_option("--config", o.config, "config file (default <root>/etc/cairn/agent.json)");
  app.add_option("--persist", o.persist_dir, "persist root (default <root>/persist)");
  app.add_option("--control", o.control_url, "control service URL, https://host:port");
  app.add_option("--ca", o.ca_file, "CA bundle that the control service must chain to");
  app.add_option("--ca-fingerprint", o.ca_fingerprint,
                 "instead of --ca: SHA-256 of the cluster CA certificate (printed by cairn-control init)");
  app.add_option("--metadata-url", o.metadata_urls, "SOURCE=URL: metadata base URL of a cloud source");
  app.add_option("--cloud", o.clouds, "probe this cloud even without a DMI hint");
  app.add_flag("--json", o.json, "print one JSON object instead of human output");
  app.add_flag("-v,--verbose", o.verbose, "log debug events too (every heartbeat); or CAIRN_LOG_LEVEL=debug");
}

Result<AgentConfig> load_agent_config(const GlobalOptions& o) {
  if (o.verbose) log::set_min_level(log::Level::debug);
  AgentConfig cfg;
  cfg.root = Root(o.root.empty() ? "/" : o.root);
  cfg.persist_dir = cfg.root / "persist";

  const std::filesystem::path path = o.config.empty() ? cfg.root / "etc/cairn/agent.json" : std::filesystem::path(o.config);
  auto text = read_file_if_exists(path, kMaxConfigBytes);
  if (!text) return fail(text.error().with_context("config"));
  if (!*text && !o.config.empty()) {
    return fail(Errc::config, "config file " + path.string() + ": no such file", "check the --config path");
  }
  Json identity_section = Json::object();
  if (*text) {
    auto j = parse_json(**text, "config file " + path.string());
    if (!j) return fail(Error{Errc::config, j.error().message, "fix the JSON syntax"});
    if (auto applied = apply_file(*j, path, cfg); !applied) return fail(applied.error());
    if (auto it = j->find("identity"); it != j->end()) identity_section = *it;
    if (auto applied = apply_tasks_section(*j, path, cfg); !applied) return fail(applied.error());  // tasks (h-atasks)
    if (auto it = j->find("persist"); it != j->end()) {  // persist (issue 15)
      if (auto ok = apply_persist_section(*it, path, cfg.persist); !ok) return fail(ok.error());
    }
  }

  if (!o.persist_dir.empty()) cfg.persist_dir = o.persist_dir;
  if (!o.control_url.empty()) cfg.control_url = o.control_url;
  if (!cfg.control_url.empty() && !cfg.control_url.starts_with("https://")) {
    return fail(Errc::config, "control URL '" + cfg.control_url + "' (from --control or " + path.string() + "): not https://",
                "the control service is only spoken to over verified TLS; use https://HOST:PORT");
  }
  if (!o.ca_file.empty()) cfg.ca_file = o.ca_file;
  if (!o.ca_fingerprint.empty()) cfg.ca_fingerprint = o.ca_fingerprint;
  if (!cfg.ca_fingerprint.empty()) {
    std::string hex;
    for (char c : cfg.ca_fingerprint) {
      if (c == ':') continue;  // accept openssl's AA:BB:... form too
      hex.push_back(static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c));
    }
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return fail(Errc::config, "CA fingerprint '" + cfg.ca_fingerprint + "': not a SHA-256 in hex",
                  "copy the 'CA SHA-256' line that cairn-control init printed");
    }
    cfg.ca_fingerprint = hex;
  }
  if (cfg.token_file.empty()) cfg.token_file = cfg.state_dir() / "bootstrap-token";
  if (cfg.module_union.empty()) cfg.module_union = cfg.root / "run/cairn/union";  // modules (issue 14)
  if (cfg.module_run_dir.empty()) cfg.module_run_dir = cfg.root / "run/cairn/modules";

  identity::Config id_defaults;
  id_defaults.root = cfg.root;
  id_defaults.persist_dir = cfg.persist_dir;
  auto id = identity::config_from_json(identity_section, id_defaults);
  if (!id) return fail(id.error().with_context("config " + path.string() + " identity section"));
  cfg.identity = std::move(*id);
  for (const auto& kv : o.metadata_urls) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == kv.size()) {
      return fail(Errc::usage, "--metadata-url '" + kv + "': expected SOURCE=URL", "e.g. --metadata-url aws=http://127.0.0.1:8080");
    }
    const auto source = kv.substr(0, eq);
    if (!identity::is_cloud_name(source)) {
      return fail(Errc::usage, "--metadata-url '" + kv + "': unknown source '" + source + "'",
                  "use one of aws, gcp, azure, digitalocean, hetzner, openstack");
    }
    cfg.identity.base_urls[source] = kv.substr(eq + 1);
  }
  for (const auto& c : o.clouds) {
    if (!identity::is_cloud_name(c)) {
      return fail(Errc::usage, "--cloud '" + c + "': unknown cloud",
                  "use one of aws, gcp, azure, digitalocean, hetzner, openstack");
    }
    cfg.identity.forced_clouds.push_back(c);
  }
  return cfg;
}

}  // namespace cairn::agent
