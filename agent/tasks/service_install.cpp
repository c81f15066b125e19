#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>

#include "agent/tasks/service.hpp"
#include "common/crypto.hpp"
#include "common/fs.hpp"

namespace cairn::agent::tasks {
namespace {

using protocol::FailureReason;
using std::chrono::milliseconds;

constexpr milliseconds kPoll{250};

bool has_control(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// A systemd quoted word: backslash and double quote escaped, % doubled (specifiers), and in
// command lines $ doubled (variable expansion) (systemd.service(5) "Command lines").
std::string quote(std::string_view s, bool command) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '%') out += '%';
    if (command && c == '$') out += '$';
    out += c;
  }
  return out + "\"";
}

bool relative_inside(const std::string& p) {
  if (p.empty() || p.front() == '/') return false;
  std::size_t start = 0;
  while (start <= p.size()) {
    const auto end = std::min(p.find('/', start), p.size());
    if (p.compare(start, end - start, "..") == 0 && end - start == 2) return false;
    start = end + 1;
  }
  return true;
}

TaskResult bad_args(const Error& e) { return failed(FailureReason::invalid_args, e.message); }

}  // namespace

Status validate_service_name(std::string_view name) {
  static const std::regex ok("[A-Za-z0-9][A-Za-z0-9_.-]{0,63}");
  if (!std::regex_match(name.begin(), name.end(), ok) || name.find("..") != std::string_view::npos) {
    return fail(Errc::data, "service name '" + std::string(name.substr(0, 80)) + "': not 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit",
                "pick a plain name like 'web' or 'metrics-exporter'");
  }
  return {};
}

std::string unit_name(std::string_view service_name) { return "cairn-" + std::string(service_name) + ".service"; }

Result<ServiceSpec> parse_install_args(const Json& args) {
  if (!args.is_object()) return fail(Errc::data, "service.install args: not a JSON object");
  ServiceSpec s;
  try {
    s.name = args.value("name", "");
    if (auto ok = validate_service_name(s.name); !ok) return fail(ok.error());
    s.archive_base64 = args.value("archive_base64", "");
    s.archive_path = args.value("archive_path", "");
    if (s.archive_base64.empty() == s.archive_path.empty()) {
      return fail(Errc::data, "service.install args: give exactly one of archive_base64 and archive_path");
    }
    if (s.archive_base64.size() > kMaxArchiveBase64Bytes) {
      return fail(Errc::data, "service.install args: archive_base64 larger than " + std::to_string(kMaxArchiveBase64Bytes) + " bytes");
    }
    if (!s.archive_path.empty() && (s.archive_path.front() != '/' || has_control(s.archive_path))) {
      return fail(Errc::data, "service.install args: archive_path must be an absolute path");
    }
    auto exec = args.find("exec");
    if (exec == args.end() || !exec->is_array() || exec->empty() || exec->size() > 256) {
      return fail(Errc::data, "service.install args: exec must be a non-empty array: the program (relative to the archive) and its arguments");
    }
    for (const auto& a : *exec) {
      const auto v = a.get<std::string>();
      if (has_control(v) || v.size() > 4096) return fail(Errc::data, "service.install args: an exec argument holds a control character");
      s.exec.push_back(v);
    }
    if (!relative_inside(s.exec.front())) {
      return fail(Errc::data, "service.install args: exec[0] '" + s.exec.front() + "' must be a path inside the archive (relative, no '..')");
    }
    if (auto env = args.find("env"); env != args.end()) {
      static const std::regex key("[A-Za-z_][A-Za-z0-9_]{0,127}");
      for (const auto& [k, v] : env->items()) {
        const auto value = v.get<std::string>();
        if (!std::regex_match(k, key) || has_control(value)) {
          return fail(Errc::data, "service.install args: env '" + k.substr(0, 60) + "': not NAME=value without control characters");
        }
        s.env[k] = value;
      }
    }
    s.cpu_quota = args.value("cpu_quota", "");
    static const std::regex cpu("[1-9][0-9]{0,5}%");
    if (!s.cpu_quota.empty() && !std::regex_match(s.cpu_quota, cpu)) {
      return fail(Errc::data, "service.install args: cpu_quota '" + s.cpu_quota.substr(0, 40) + "': expected a percentage like 50%");
    }
    s.memory_max = args.value("memory_max", "");
    static const std::regex mem("[1-9][0-9]{0,15}[KMGT]?|infinity");
    if (!s.memory_max.empty() && !std::regex_match(s.memory_max, mem)) {
      return fail(Errc::data, "service.install args: memory_max '" + s.memory_max.substr(0, 40) + "': expected bytes like 256M");
    }
    s.dynamic_user = args.value("dynamic_user", true);
    s.user = args.value("user", "");
    static const std::regex user("[a-z_][a-z0-9_-]{0,31}");
    if (!s.user.empty() && (s.dynamic_user || !std::regex_match(s.user, user))) {
      return fail(Errc::data, "service.install args: user '" + s.user.substr(0, 40) + "': only with dynamic_user false, and a plain user name");
    }
    s.start_timeout_s = std::clamp<std::int64_t>(args.value("start_timeout_s", std::int64_t{30}), 1, 600);
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string("service.install args: ") + e.what());
  }
  return s;
}

std::string render_unit(const ServiceSpec& s, const std::string& dir) {
  std::string u;
  u += "# Generated by cairn-agent (service.install); replaced on the next install.\n";
  u += "[Unit]\nDescription=Cairn service " + s.name + "\nAfter=network-online.target\nWants=network-online.target\n\n";
  u += "[Service]\nType=exec\n";
  u += "ExecStart=" + quote(dir + "/" + s.exec.front(), true);
  for (std::size_t i = 1; i < s.exec.size(); ++i) u += " " + quote(s.exec[i], true);
  u += "\nWorkingDirectory=" + dir + "\n";
  for (const auto& [k, v] : s.env) u += "Environment=" + quote(k + "=" + v, false) + "\n";
  if (s.dynamic_user) u += "DynamicUser=yes\n";
  else if (!s.user.empty()) u += "User=" + s.user + "\n";
  u += "ProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nPrivateDevices=yes\nNoNewPrivileges=yes\n";
  u += "ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectControlGroups=yes\nRestrictSUIDSGID=yes\n";
  if (!s.cpu_quota.empty()) u += "CPUQuota=" + s.cpu_quota + "\n";
  if (!s.memory_max.empty()) u += "MemoryMax=" + s.memory_max + "\n";
  u += "Restart=on-failure\nRestartSec=2s\n\n[Install]\nWantedBy=multi-user.target\n";
  return u;
}

Status stop_and_wait(Systemd& systemd, const std::string& unit, const TaskContext& ctx) {
  auto state = systemd.active_state(unit);
  if (!state) return fail(state.error());
  if (*state == "inactive" || *state == "failed") return {};
  if (auto ok = systemd.stop_unit(unit); !ok) return ok;
  const auto deadline = ctx.clock.monotonic() + std::chrono::seconds(90);
  for (;;) {
    state = systemd.active_state(unit);
    if (!state) return fail(state.error());
    if (*state == "inactive" || *state == "failed") return {};
    if (ctx.clock.monotonic() >= deadline) return fail(Errc::temporary, unit + " did not stop within 90 s (" + *state + ")");
    ctx.clock.sleep_until(ctx.clock.monotonic() + kPoll);
  }
}

bool runs_as_root(const ServiceSpec& spec) { return !spec.dynamic_user && (spec.user.empty() || spec.user == "root"); }

Result<ServiceSpec> checked_install_args(const Json& args, const KindSettings& settings) {
  auto s = parse_install_args(args);
  if (!s) return s;
  if (runs_as_root(*s) && !settings.allow_root_services) {
    return fail(Errc::data,
                "service.install args: service '" + s->name + "' would run as root (dynamic_user false" +
                    (s->user.empty() ? " without a user" : ", user root") +
                    "), which this node does not allow: run it as a dynamic or named user, or set "
                    "\"allow_root_services\": true in the \"tasks\" section of the node's agent.json");
  }
  return s;
}

Status ServiceInstallKind::validate(const Json& args) const {
  auto s = checked_install_args(args, settings_);
  if (!s) return fail(s.error());
  return {};
}

TaskResult ServiceInstallKind::run(const Json& args, const TaskContext& ctx) {
  auto spec = checked_install_args(args, settings_);
  if (!spec) return bad_args(spec.error());
  const auto dir = ctx.root / settings_.services_dir;
  const auto unit = unit_name(spec->name);
  const std::string host_dir = settings_.services_dir + "/" + spec->name;
  if (auto ok = make_dirs(dir, 0755); !ok) return failed(FailureReason::internal, ok.error().message);
  // Exactly 0755, not cut by the agent's UMask=0077: the services run as dynamic users, who must
  // pass through it to their own tree.
  if (::chmod(dir.c_str(), 0755) != 0) {
    return failed(FailureReason::internal, "chmod 0755 " + dir.string() + ": " + std::strerror(errno));
  }
  const std::string tag = random_hex(6);
  const auto staging = dir / ("." + spec->name + ".new-" + tag);
  const auto incoming = dir / ("." + spec->name + ".archive-" + tag);
  struct Cleanup {
    std::filesystem::path a, b;
    ~Cleanup() {
      std::error_code ec;
      if (!a.empty()) std::filesystem::remove_all(a, ec);
      if (!b.empty()) std::filesystem::remove(b, ec);
    }
  } cleanup{staging, {}};

  // 1. The archive, then the tree, checked entry by entry, in a temp dir beside the target.
  std::filesystem::path archive;
  if (!spec->archive_base64.empty()) {
    auto bytes = base64_decode(spec->archive_base64);
    if (!bytes) return bad_args(bytes.error().with_context("service.install archive_base64"));
    if (auto ok = write_file_atomic(incoming, *bytes, 0600); !ok) return failed(FailureReason::internal, ok.error().message);
    cleanup.b = incoming;
    archive = incoming;
  } else {
    archive = ctx.root / spec->archive_path;
  }
  auto stats = extract_archive(archive, staging, limits_);
  if (!stats) {
    return failed(stats.error().code == Errc::data ? FailureReason::invalid_args : FailureReason::internal,
                  stats.error().message);
  }
  std::error_code ec;
  const auto program = staging / spec->exec.front();
  const auto real = std::filesystem::weakly_canonical(program, ec);
  const auto base = std::filesystem::canonical(staging, ec);
  const auto st = std::filesystem::status(program, ec);
  if (ec || !std::filesystem::is_regular_file(st) || !real.string().starts_with(base.string() + "/") ||
      (st.permissions() & std::filesystem::perms::owner_exec) == std::filesystem::perms::none) {
    return bad_args(Error{Errc::data, "service.install: exec[0] '" + spec->exec.front() + "' is not an executable file in the archive", "list the program's path inside the archive in exec[0]"});
  }

  // 2. systemd: reached before anything installed is touched.
  auto systemd = settings_.systemd();
  if (!systemd) return failed(FailureReason::internal, systemd.error().message);

  // 3. Replacing: the old service stops first; then the new tree takes the name at once
  //    (RENAME_EXCHANGE), so NAME is always a whole tree, old or new.
  auto before = (*systemd)->active_state(unit);
  if (!before) return failed(FailureReason::internal, before.error().message);
  const bool was_running = *before == "active" || *before == "activating" || *before == "reloading";
  if (auto ok = stop_and_wait(**systemd, unit, ctx); !ok) {
    return failed(FailureReason::internal, "stop the running " + unit + ": " + ok.error().message);
  }
  const auto target = dir / spec->name;
  const bool replaced = std::filesystem::exists(std::filesystem::symlink_status(target, ec));
  if (replaced) {
    if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
      return failed(FailureReason::internal, "replace " + target.string() + ": " + std::strerror(errno));
    }
    // staging now holds the old tree: the cleanup removes it.
  } else if (::rename(staging.c_str(), target.c_str()) != 0) {
    return failed(FailureReason::internal, "install " + target.string() + ": " + std::strerror(errno));
  }
  if (auto ok = fsync_dir(dir); !ok) return failed(FailureReason::internal, ok.error().message);

  // 4. The unit, enabled for boot (the wants link systemctl enable would make), started.
  const auto units = ctx.root / settings_.units_dir;
  auto old_unit = read_file_if_exists(units / unit, 1 << 20);
  if (!old_unit) return failed(FailureReason::internal, old_unit.error().message);
  // A replacement that does not start gives way to the version it replaced: its tree and
  // unit come back, and it is started again if it was running.
  const auto give_way = [&](TaskResult r) {
    if (!replaced) return r;
    std::error_code e;
    (void)(*systemd)->stop_unit(unit);
    if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
      r.error += "; putting the previous version back failed: " + std::string(std::strerror(errno));
      return r;
    }
    Status restored = *old_unit ? write_file_atomic(units / unit, **old_unit, 0644) : Status{};
    if (!*old_unit) std::filesystem::remove(units / unit, e);
    if (restored) restored = (*systemd)->daemon_reload();
    if (restored && was_running) restored = (*systemd)->start_unit(unit);
    r.error += restored ? "; the previous version was put back" + std::string(was_running ? " and started" : "")
                        : "; putting the previous version back failed: " + restored.error().message;
    return r;
  };
  if (auto ok = write_file_atomic(units / unit, render_unit(*spec, host_dir), 0644); !ok) {
    return failed(FailureReason::internal, ok.error().message);
  }
  const auto wants = units / "multi-user.target.wants";
  if (auto ok = make_dirs(wants, 0755); !ok) return failed(FailureReason::internal, ok.error().message);
  std::filesystem::remove(wants / unit, ec);
  std::filesystem::create_symlink("../" + unit, wants / unit, ec);
  if (ec) return failed(FailureReason::internal, "enable " + unit + ": " + ec.message());
  if (auto ok = (*systemd)->daemon_reload(); !ok) return failed(FailureReason::internal, ok.error().message);
  if (auto ok = (*systemd)->start_unit(unit); !ok) return give_way(failed(FailureReason::internal, ok.error().message));

  const auto deadline = ctx.clock.monotonic() + std::chrono::seconds(spec->start_timeout_s);
  std::string state;
  for (;;) {
    auto s = (*systemd)->active_state(unit);
    if (!s) return failed(FailureReason::internal, s.error().message);
    state = *s;
    if (state == "active") break;
    if (state == "failed") {
      return give_way(failed(FailureReason::exit_nonzero, unit + " failed to start; see journalctl -u " + unit));
    }
    if (ctx.clock.monotonic() >= deadline) {
      return give_way(failed(FailureReason::timeout,
                             unit + " not active after " + std::to_string(spec->start_timeout_s) + " s (" + state + ")"));
    }
    if (ctx.clock.sleep_until(ctx.clock.monotonic() + kPoll, ctx.cancel_fd)) {
      TaskResult r;
      r.outcome = "cancelled";
      r.error = "cancelled while " + unit + " was starting (it stays installed)";
      return r;
    }
  }
  TaskResult r;
  r.output = "installed " + spec->name + ": " + std::to_string(stats->entries) + " entries, " +
             std::to_string(stats->bytes) + " bytes in " + host_dir + "\nunit " + unit + ": " + state + "\n";
  r.output_bytes = static_cast<std::int64_t>(r.output.size());
  return r;
}

}  // namespace cairn::agent::tasks
