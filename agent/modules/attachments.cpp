#include "agent/modules/attachments.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "common/crypto.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "common/oci/module_artifact.hpp"
#include "agent/modules/policy.hpp"

namespace cairn::agent::modules {
namespace {

std::vector<Layer> layers_of(const ModuleStore& store, const std::vector<AttachedModule>& attached) {
  std::vector<Layer> out;
  for (const auto& a : attached) {
    Layer l;
    l.name = a.name;
    l.version = a.version;
    l.priority = a.priority;
    l.image_digest = a.image_digest;
    l.image = store.blob_path(a.image_digest).value_or(std::filesystem::path());
    l.required = a.required;
    l.depends = a.depends;
    out.push_back(std::move(l));
  }
  return out;
}

std::filesystem::path pending_events_path(const std::filesystem::path& modules_dir) {
  return modules_dir / "events.pending";
}

// "sha256:<hex>" -> "sha256-<hex>" (event ids stay one word).
std::string id_part(std::string_view digest) {
  std::string out(digest);
  std::replace(out.begin(), out.end(), ':', '-');
  return out;
}

void record_all(const ModuleStore& store, const std::vector<protocol::Event>& events) {
  for (const auto& e : events) {
    if (auto ok = record_event(store, e); !ok) {
      log::warn("modules.event_not_recorded", {{"kind", e.kind}, {"error", ok.error().message}});
    }
  }
}

}  // namespace

Status record_event(const ModuleStore& store, const protocol::Event& event) {
  if (auto ok = make_dirs(store.dir(), 0700); !ok) return ok;
  const auto path = pending_events_path(store.dir());
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!fd) return fail(Errc::io, "open " + path.string() + ": " + std::strerror(errno));
  if (::flock(fd.get(), LOCK_EX) != 0) return fail(Errc::io, "lock " + path.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail(Errc::io, "stat " + path.string() + ": " + std::strerror(errno));
  const std::string line = dump_json({{"id", event.id}, {"severity", event.severity}, {"kind", event.kind},
                                      {"message", event.message}, {"time", event.time}}) + "\n";
  if (static_cast<std::size_t>(st.st_size) + line.size() > kMaxPendingEventBytes) {
    return fail(Errc::temporary, path.string() + " is full (" + std::to_string(st.st_size) + " bytes): event " + event.kind + " dropped",
                "start cairn-agent service: it delivers these events to control");
  }
  std::string_view rest(line);
  while (!rest.empty()) {
    const auto n = ::write(fd.get(), rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(Errc::io, "write " + path.string() + ": " + std::strerror(errno));
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  if (::fsync(fd.get()) != 0) return fail(Errc::io, "fsync " + path.string() + ": " + std::strerror(errno));
  return {};
}

Result<std::size_t> drain_events(const AgentConfig& config, const std::function<Status(const protocol::Event&)>& sink) {
  const auto path = pending_events_path(config.state_dir() / "modules");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return std::size_t{0};
    return fail(Errc::io, "open " + path.string() + ": " + std::strerror(errno));
  }
  if (::flock(fd.get(), LOCK_EX) != 0) return fail(Errc::io, "lock " + path.string() + ": " + std::strerror(errno));
  std::string text;
  char buf[8192];
  for (;;) {
    const auto n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errc::io, "read " + path.string() + ": " + std::strerror(errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > kMaxPendingEventBytes + 4096) break;  // never more than the cap was written
  }
  std::size_t count = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = parse_json(line, path.string());
    if (!j || !j->is_object()) continue;  // a torn line: nothing to deliver
    protocol::Event e{j->value("id", ""), j->value("severity", "info"), j->value("kind", ""), j->value("message", ""),
                      j->value("time", "")};
    if (e.kind.empty()) continue;
    if (auto ok = sink(e); !ok) return fail(ok.error());
    ++count;
  }
  if (::ftruncate(fd.get(), 0) != 0) return fail(Errc::io, "truncate " + path.string() + ": " + std::strerror(errno));
  return count;
}

std::vector<protocol::Event> verity_events(const std::vector<AttachedModule>& before,
                                           const std::vector<AttachedModule>& attached) {
  std::vector<protocol::Event> out;
  for (const auto& a : attached) {
    if (!a.verity.starts_with("unavailable")) continue;
    const bool known = std::any_of(before.begin(), before.end(), [&](const AttachedModule& b) {
      return b.name == a.name && b.image_digest == a.image_digest;
    });
    if (known) continue;
    out.push_back({"module.verity_unavailable." + id_part(a.image_digest), "warning", "module.verity_unavailable",
                   "module " + a.name + " " + a.version + " (image " + a.image_digest + "): fs-verity " + a.verity +
                       "; the image was verified when attached, but the kernel does not check later reads",
                   a.attached_at});
  }
  return out;
}

Result<ModulesEnv> modules_env(const AgentConfig& config, const std::string& now_rfc3339) {
  auto policy = trust_policy_from_json(config.module_trust, [&](const std::string& value) {
    return config_file_path(config.root, config.module_config_file, value);
  });
  if (!policy) return fail(policy.error());
  // The policy control distributed, as far as a pinned policy key signed it (h-modpolicy).
  if (auto ok = merge_accepted_policy(config, *policy, now_rfc3339); !ok) {
    if (ok.error().code == Errc::config) return fail(ok.error());
    log::warn("modules.policy_unusable", {{"error", ok.error().message}});  // the agent's own trust still holds
  }
  auto registry = registry_settings(config);
  if (!registry) return fail(registry.error());
  auto mode = parse_upper_mode(config.module_upper);
  if (!mode) return fail(mode.error());
  ModulesEnv env{.store = ModuleStore(config.state_dir() / "modules"),
                 .paths = UnionPaths{.mount_point = config.module_union,
                                     .run_dir = config.module_run_dir,
                                     .persist_upper = config.state_dir() / "modules/upper",
                                     .upper_mode = *mode},
                 .policy = std::move(*policy),
                 .registry = std::move(*registry)};
  return env;
}

Result<ChangeOutcome> apply_set(ModulesEnv& env, Mounter& mounter, std::vector<AttachedModule> next) {
  auto checks = default_checks([&](const Layer& l) -> Status {
    auto it = std::find_if(next.begin(), next.end(), [&](const AttachedModule& a) { return a.name == l.name; });
    if (it == next.end()) return fail(Errc::internal, "layer " + l.name + " without an attached module");
    return reverify_attached(env.store, *it, env.policy);
  });
  if (!env.inspect_mounts) {
    checks.mounted_layer = nullptr;
    checks.merged = nullptr;
  }
  UnionManager manager(mounter, env.paths);
  auto before = env.store.load_attached();
  auto outcome = manager.apply(layers_of(env.store, next), checks);
  if (!outcome) return fail(outcome.error());
  ChangeOutcome change;
  for (auto& a : next) {
    const bool left_out = std::any_of(outcome->excluded.begin(), outcome->excluded.end(),
                                      [&](const Exclusion& e) { return e.name == a.name; });
    if (!left_out) change.attached.push_back(std::move(a));
  }
  if (auto ok = env.store.save_attached(change.attached); !ok) return fail(ok.error());
  record_all(env.store, verity_events(before ? *before : std::vector<AttachedModule>{}, change.attached));
  auto removed = env.store.collect_garbage(change.attached);
  if (!removed) return fail(removed.error().with_context("garbage collection"));
  change.gc_removed = *removed;
  change.union_outcome = std::move(*outcome);
  return change;
}

Result<AttachedModule> fetch_and_verify(ModulesEnv& env, oci::Registry& registry, const std::string& name,
                                        const std::string& version, const std::string& now_rfc3339) {
  if (!env.registry) {
    return fail(Errc::config, "no module registry configured", "set \"registry\" in the \"modules\" section of the agent's config");
  }
  auto ref = module_reference(*env.registry, name, version);
  if (!ref) return fail(ref.error());
  return fetch_and_verify_ref(env, registry, *ref, name, version == "latest" ? std::nullopt : std::optional(version), now_rfc3339);
}

Result<AttachedModule> fetch_and_verify_ref(ModulesEnv& env, oci::Registry& registry, const oci::Reference& ref,
                                            const std::string& name, std::optional<std::string> version,
                                            const std::string& now_rfc3339) {
  auto fetched = fetch_module(registry, ref, env.store);
  if (!fetched) return fail(fetched.error());
  VerifyRequest request{.manifest_text = fetched->manifest_text, .signatures = fetched->signatures, .image = fetched->image,
                        .expect_name = name, .expect_version = std::move(version), .enable_verity = true};
  auto verified = verify_module(request, env.policy);
  if (!verified) {
    // What this fetch downloaded and failed verification is not kept: the next attempt
    // fetches it again. An image the store held before may belong to an attached module.
    if (fetched->downloaded) {
      std::error_code ec;
      std::filesystem::remove(fetched->image, ec);
    }
    return fail(verified.error().with_context("verify " + ref.str()));
  }
  auto manifest_digest = env.store.put_bytes(fetched->manifest_text);
  if (!manifest_digest) return fail(manifest_digest.error());
  auto signature_digest = env.store.put_bytes(fetched->signatures[verified->signature_index]);
  if (!signature_digest) return fail(signature_digest.error());
  const auto& m = verified->manifest;
  return AttachedModule{.name = m.name, .version = m.version, .priority = m.priority, .required = false,
                        .depends = m.dependencies, .image_digest = fetched->image_digest,
                        .fsverity_digest = module::fsverity_display(m.fsverity), .manifest_digest = *manifest_digest,
                        .signature_digest = *signature_digest, .key_id = verified->key_id, .source = fetched->reference,
                        .verity = verified->verity, .attached_at = now_rfc3339};
}

Result<ChangeOutcome> attach(ModulesEnv& env, Mounter& mounter, AttachedModule module) {
  auto current = env.store.load_attached();
  if (!current) return fail(current.error());
  auto next = *current;
  std::erase_if(next, [&](const AttachedModule& a) { return a.name == module.name; });
  const std::string name = module.name;
  next.push_back(std::move(module));
  auto change = apply_set(env, mounter, std::move(next));
  if (!change) return fail(change.error());
  for (const auto& e : change->union_outcome.excluded) {
    if (e.name != name) continue;
    // Left out: put the previous set back (the old version of this module, if any).
    auto restored = apply_set(env, mounter, *current);
    if (!restored) return fail(restored.error().with_context("module " + name + " was left out (" + e.reason + "), then restoring the previous set"));
    return fail(Errc::refused, "module " + name + " could not join the union: " + e.reason, "the previous set is mounted again");
  }
  return change;
}

Result<ChangeOutcome> detach(ModulesEnv& env, Mounter& mounter, const std::string& name) {
  auto current = env.store.load_attached();
  if (!current) return fail(current.error());
  auto next = *current;
  if (std::erase_if(next, [&](const AttachedModule& a) { return a.name == name; }) == 0) {
    return fail(Errc::usage, "module " + name + " is not attached", "cairn-agent modules lists the attached ones");
  }
  for (const auto& a : next) {
    if (std::find(a.depends.begin(), a.depends.end(), name) != a.depends.end()) {
      return fail(Errc::refused, "module " + a.name + " depends on " + name, "detach " + a.name + " first");
    }
  }
  return apply_set(env, mounter, std::move(next));
}

Status save_desired(const AgentConfig& config, const std::vector<protocol::ModuleRef>& desired) {
  Json list = Json::array();
  for (const auto& d : desired) {
    Json entry = {{"name", d.name}, {"digest", d.digest}};
    if (d.required) entry["required"] = true;
    list.push_back(std::move(entry));
  }
  const auto path = config.state_dir() / "modules/desired.json";
  const auto text = dump_json({{"desired", list}}, 2) + "\n";
  // Every heartbeat brings it: written (and fsynced) only when it changed.
  if (auto old = read_file_if_exists(path, 1 << 20); old && *old && **old == text) return {};
  return write_file_atomic(path, text);
}

Result<std::optional<std::vector<protocol::ModuleRef>>> load_desired(const AgentConfig& config) {
  const auto path = config.state_dir() / "modules/desired.json";
  auto text = read_file_if_exists(path, 1 << 20);
  if (!text) return fail(text.error());
  if (!*text) return std::optional<std::vector<protocol::ModuleRef>>{};
  return decode_json<std::optional<std::vector<protocol::ModuleRef>>>(**text, path.string(), [](const Json& j) {
    std::vector<protocol::ModuleRef> out;
    for (const auto& d : j.at("desired")) {
      out.push_back({d.at("name").get<std::string>(), d.at("digest").get<std::string>(), false, d.value("required", false)});
    }
    return std::optional(out);
  });
}

Result<UpdateOutcome> update(ModulesEnv& env, Mounter& mounter, oci::Registry& registry,
                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339,
                             const std::function<bool()>& stop) {
  if (!env.registry) {
    return fail(Errc::config, "no module registry configured", "set \"registry\" in the \"modules\" section of the agent's config");
  }
  return update(env, mounter, registry_fetch(env, registry, now_rfc3339), desired, now_rfc3339, stop);
}

FetchFn registry_fetch(ModulesEnv& env, oci::Registry& registry, const std::string& now_rfc3339) {
  return [&env, &registry, now_rfc3339](const protocol::ModuleRef& d) -> Result<AttachedModule> {
    if (!env.registry) {
      return fail(Errc::config, "no module registry configured", "set \"registry\" in the \"modules\" section of the agent's config");
    }
    auto ref = oci::parse_reference(env.registry->host + "/" + (env.registry->prefix.empty() ? "" : env.registry->prefix + "/") +
                                    d.name + "@" + d.digest);
    if (!ref) return fail(ref.error());
    return fetch_and_verify_ref(env, registry, *ref, d.name, std::nullopt, now_rfc3339);
  };
}

std::optional<Error> fatal_failure(const std::vector<protocol::ModuleRef>& desired, const std::vector<AttachedModule>& next,
                                   const std::vector<Exclusion>& failed, std::string* culprit) {
  for (const auto& f : failed) {
    if (culprit != nullptr) *culprit = f.name;
    const bool required = std::any_of(desired.begin(), desired.end(),
                                      [&](const protocol::ModuleRef& d) { return d.name == f.name && d.required; });
    if (required) {
      return Error{Errc::refused, "required module " + f.name + " could not be fetched or verified: " + f.reason,
                   "the whole change is refused and the union stays as it was; fix or replace " + f.name + " in the catalog"};
    }
    for (const auto& a : next) {
      if (a.name == f.name) continue;
      if (std::find(a.depends.begin(), a.depends.end(), f.name) != a.depends.end()) {
        return Error{Errc::refused, "module " + f.name + " could not be fetched or verified (" + f.reason + ") and module " + a.name +
                                        " depends on it",
                     "the whole change is refused and the union stays as it was; fix or replace " + f.name + " in the catalog"};
      }
    }
  }
  return std::nullopt;
}

Result<UpdateOutcome> update(ModulesEnv& env, Mounter& mounter, const FetchFn& fetch,
                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339,
                             const std::function<bool()>& stop) {
  auto current = env.store.load_attached();
  if (!current) return fail(current.error());
  // h-apply: a stop between two steps leaves everything as it was (nothing mounted yet).
  const auto abandoned = [&] { return stop && stop(); };
  const auto abandon = [] {
    return fail(Errc::temporary, "module update abandoned: the agent is stopping",
                "nothing was mounted or unmounted; the service applies the desired set when it runs again");
  };
  UpdateOutcome out;
  std::vector<AttachedModule> next;
  std::vector<std::pair<protocol::ModuleRef, Error>> refusals;
  for (const auto& d : desired) {
    if (abandoned()) return abandon();
    auto it = std::find_if(current->begin(), current->end(), [&](const AttachedModule& a) { return a.name == d.name; });
    if (it != current->end() && it->source.ends_with("@" + d.digest)) {
      next.push_back(*it);  // already the desired one
      next.back().required = d.required;
      continue;
    }
    auto fetched = fetch(d);
    if (!fetched) {
      out.failed.push_back({d.name, fetched.error().message});
      refusals.emplace_back(d, fetched.error());
      if (!out.first_error) out.first_error = fetched.error();
      if (it != current->end()) next.push_back(*it);  // keep what runs until the new one verifies
      continue;
    }
    fetched->required = d.required;
    next.push_back(std::move(*fetched));
  }
  if (abandoned()) return abandon();  // h-apply: the last point before events and mounts
  std::string set_key;
  for (const auto& d : desired) set_key += d.name + "@" + d.digest + (d.required ? "!" : "") + "\n";
  const auto update_failed = [&](const std::string& why) {
    record_all(env.store, {{"module.update_failed." + sha256_hex(set_key).substr(0, 32), "warning", "module.update_failed",
                            "the desired module set could not be applied: " + why + "; the union stays as it was", now_rfc3339}});
  };
  std::string culprit;
  if (auto fatal = fatal_failure(desired, next, out.failed, &culprit)) {
    // A registry that did not answer (or a download that broke off) is worth another attempt
    // soon: the change keeps that error's code, so the boot and the service retry it as such
    // instead of waiting as for a refused signature.
    for (const auto& [d, error] : refusals) {
      if (d.name == culprit && (error.code == Errc::unavailable || error.code == Errc::temporary || error.code == Errc::io)) {
        fatal->code = error.code;
      }
    }
    // Nothing was mounted yet: the union and the attached list stay exactly as they were.
    update_failed(fatal->message);
    return fail(std::move(*fatal));
  }
  for (const auto& [d, error] : refusals) {
    auto it = std::find_if(current->begin(), current->end(), [&](const AttachedModule& a) { return a.name == d.name; });
    // Control keeps ids of up to 128 bytes: the name (at most 64) and 32 hex of the digest.
    record_all(env.store, {{"module.refused." + d.name + "." + id_part(d.digest).substr(0, 39), "warning", "module.refused",
                            "desired module " + d.name + " (" + d.digest + ") refused: " + error.message +
                                (it != current->end() ? "; " + it->name + " " + it->version + " stays attached"
                                                      : "; it is not attached"),
                            now_rfc3339}});
  }
  auto change = apply_set(env, mounter, std::move(next));
  if (!change) {
    update_failed(change.error().message);
    return fail(change.error());
  }
  out.change = std::move(*change);
  return out;
}

std::vector<protocol::ModuleRef> running_modules(const AgentConfig& config) {
  std::vector<protocol::ModuleRef> out;
  ModuleStore store(config.state_dir() / "modules");
  auto attached = store.load_attached();
  if (!attached) return out;
  UnionPaths paths{.mount_point = config.module_union, .run_dir = config.module_run_dir, .persist_upper = {},
                   .upper_mode = UpperMode::tmpfs};
  auto mounter = make_linux_mounter(config.root);
  UnionManager manager(*mounter, paths);
  auto state = manager.load_state();
  for (const auto& a : *attached) {
    bool mounted = false;
    if (state) {
      for (const auto& l : state->layers) mounted = mounted || (l.name == a.name && l.image_digest == a.image_digest);
    }
    out.push_back({a.name, a.image_digest, mounted});
  }
  return out;
}

}  // namespace cairn::agent::modules

namespace cairn::agent::modules {
namespace {

// h-apply: the one update of a persist root at a time (flock, released with the fd).
Result<UniqueFd> lock_updates(const ModuleStore& store, const UpdateHooks& hooks) {
  if (auto ok = make_dirs(store.dir(), 0700); !ok) return fail(ok.error());
  const auto path = store.dir() / "update.lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return fail(Errc::io, "open " + path.string() + ": " + std::strerror(errno));
  const Clock& clock = hooks.clock != nullptr ? *hooks.clock : SystemClock::instance();
  const auto deadline = clock.monotonic() + hooks.lock_wait;
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno != EWOULDBLOCK && errno != EINTR) return fail(Errc::io, "lock " + path.string() + ": " + std::strerror(errno));
    if (hooks.stop && hooks.stop()) {
      return fail(Errc::temporary, "module update abandoned while waiting for " + path.string() + ": the agent is stopping");
    }
    if (clock.monotonic() >= deadline) {
      return fail(Errc::temporary, "another module update holds " + path.string(),
                  "`cairn-agent update` or the service is applying the desired set; retry when it is done");
    }
    clock.sleep_until(std::min<Clock::MonoTime>(deadline, clock.monotonic() + std::chrono::milliseconds(100)));
  }
}

}  // namespace

Result<UpdateOutcome> update_from_config(const AgentConfig& config, const std::vector<protocol::ModuleRef>& desired,
                                         const std::string& now_rfc3339, const UpdateHooks& hooks) {
  auto env = modules_env(config, now_rfc3339);
  if (!env) return fail(env.error());
  if (!env->registry) {
    return fail(Errc::config, "no module registry configured", "set \"registry\" in the \"modules\" section of the agent's config");
  }
  auto lock = lock_updates(env->store, hooks);
  if (!lock) return fail(lock.error());
  std::unique_ptr<HttpClient> http = oci::make_registry_http(env->registry->options);
  if (hooks.wrap_http) http = hooks.wrap_http(std::move(http));
  oci::Registry registry(*http, env->registry->host, env->registry->options);
  auto mounter = make_linux_mounter(config.root);
  return update(*env, *mounter, registry, desired, now_rfc3339, hooks.stop);
}

bool matches_desired(const std::vector<AttachedModule>& attached, const std::vector<protocol::ModuleRef>& desired) {
  if (attached.size() != desired.size()) return false;
  return std::all_of(desired.begin(), desired.end(), [&](const protocol::ModuleRef& d) {
    return std::any_of(attached.begin(), attached.end(), [&](const AttachedModule& a) {
      return a.name == d.name && a.source.ends_with("@" + d.digest) && a.required == d.required;
    });
  });
}

}  // namespace cairn::agent::modules
