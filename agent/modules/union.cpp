#include "agent/modules/union.hpp"

#include <sys/vfs.h>

#include <algorithm>
#include <map>
#include <set>
#include <system_error>

#include "common/fs.hpp"
#include "common/log.hpp"

namespace cairn::agent::modules {
namespace {

constexpr long kOverlayfsMagic = 0x794c7630;  // OVERLAYFS_SUPER_MAGIC, linux/magic.h
constexpr std::size_t kMaxStateBytes = 1 << 20;

std::filesystem::path release_file(const std::filesystem::path& dir, const std::string& name) {
  return dir / "usr/lib/extension-release.d" / ("extension-release." + name);
}

std::string hex_of(const std::string& digest) {
  const auto colon = digest.find(':');
  return colon == std::string::npos ? digest : digest.substr(colon + 1);
}

// Where a layer's image is mounted: one directory per name and image, so an unchanged
// module keeps its mount across changes of the set.
std::filesystem::path layer_dir(const UnionPaths& paths, const Layer& layer) {
  return paths.run_dir / "layers" / (layer.name + "-" + hex_of(layer.image_digest).substr(0, 16));
}

void remove_tree(const std::filesystem::path& p) {
  std::error_code ec;
  std::filesystem::remove_all(p, ec);
  if (ec) log::warn("modules.cleanup_failed", {{"path", p.string()}, {"error", ec.message()}});
}

// Makes `link` a symlink to `target` (relative, so it resolves the same inside a chroot) in
// one rename(2): a reader resolving `link` finds the old target or the new one, never
// nothing. The first time an empty directory may hold the place: it goes first (there is no
// union yet to keep readable).
Status swap_link(Mounter& mounter, const std::filesystem::path& link, const std::filesystem::path& target) {
  std::error_code ec;
  const auto parent = link.parent_path();
  if (auto ok = make_dirs(parent); !ok) return ok;
  const auto tmp = parent / ("." + link.filename().string() + ".next");
  std::filesystem::remove(tmp, ec);
  std::filesystem::create_symlink(target.lexically_relative(parent), tmp, ec);
  if (ec) return fail(Errc::io, "create symlink " + tmp.string() + ": " + ec.message());
  const auto st = std::filesystem::symlink_status(link, ec);
  if (std::filesystem::is_directory(st)) {
    auto mounted = mounter.is_mount_point(link);
    if (!mounted || *mounted || !std::filesystem::is_empty(link, ec)) {
      std::filesystem::remove(tmp, ec);
      return fail(Errc::refused, link.string() + " is a directory that is mounted on or not empty, not the union's symlink",
                  "this kernel lacks MOVE_MOUNT_BENEATH: the union is switched through a symlink there; "
                  "unmount " + link.string() + " (or reboot) and apply the set again");
    }
    std::filesystem::remove(link, ec);
  }
  std::filesystem::rename(tmp, link, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return fail(Errc::io, "rename the union symlink onto " + link.string() + ": " + ec.message());
  }
  return fsync_dir(parent);
}

// A symlink the union left at `link` goes (an empty desired set, teardown).
void remove_link(const std::filesystem::path& link) {
  std::error_code ec;
  if (std::filesystem::is_symlink(std::filesystem::symlink_status(link, ec))) std::filesystem::remove(link, ec);
}

}  // namespace

std::string_view upper_mode_name(UpperMode mode) { return mode == UpperMode::persist ? "persist" : "tmpfs"; }

Result<UpperMode> parse_upper_mode(std::string_view text) {
  if (text == "tmpfs") return UpperMode::tmpfs;
  if (text == "persist") return UpperMode::persist;
  return fail(Errc::config, "upper mode '" + std::string(text) + "': unknown", "use tmpfs (ephemeral) or persist");
}

bool valid_module_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  const auto ok = [](char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (!first && (c == '.' || c == '_' || c == '-'));
  };
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!ok(name[i], i == 0)) return false;
  }
  return true;
}

Json to_json(const UnionState& s) {
  Json layers = Json::array();
  for (const auto& l : s.layers) {
    layers.push_back({{"name", l.name}, {"version", l.version}, {"priority", l.priority},
                      {"image_digest", l.image_digest}, {"dir", l.dir.string()}});
  }
  Json j = {{"generation", s.generation}, {"mount_point", s.mount_point.string()},
            {"upper_mode", upper_mode_name(s.upper_mode)}, {"layers", layers}};
  if (!s.merged.empty()) j["merged"] = s.merged.string();
  if (!s.previous.empty()) {
    Json dirs = Json::array();
    for (const auto& d : s.previous_layers) dirs.push_back(d.string());
    j["previous"] = {{"merged", s.previous.string()}, {"generation", s.previous_generation}, {"layers", dirs}};
  }
  return j;
}

Result<UnionState> union_state_from_json(const Json& j) {
  try {
    UnionState s;
    s.generation = j.at("generation").get<std::uint64_t>();
    s.mount_point = j.at("mount_point").get<std::string>();
    auto mode = parse_upper_mode(j.at("upper_mode").get<std::string>());
    if (!mode) return fail(mode.error());
    s.upper_mode = *mode;
    for (const auto& l : j.at("layers")) {
      s.layers.push_back({l.at("name").get<std::string>(), l.at("version").get<std::string>(),
                          l.at("priority").get<std::int64_t>(), l.at("image_digest").get<std::string>(),
                          l.at("dir").get<std::string>()});
    }
    if (auto it = j.find("merged"); it != j.end()) s.merged = it->get<std::string>();
    if (auto it = j.find("previous"); it != j.end()) {
      s.previous = it->at("merged").get<std::string>();
      s.previous_generation = it->at("generation").get<std::uint64_t>();
      for (const auto& d : it->at("layers")) s.previous_layers.emplace_back(d.get<std::string>());
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string("union state: ") + e.what(), "unmount the union by hand and remove union.json");
  }
}

UnionChecks default_checks(std::function<Status(const Layer&)> before_mount) {
  UnionChecks c;
  c.before_mount = std::move(before_mount);
  c.mounted_layer = [](const Layer& layer, const std::filesystem::path& dir) -> Status {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(release_file(dir, layer.name), ec)) {
      return fail(Errc::data, "module " + layer.name + ": image lacks usr/lib/extension-release.d/extension-release." + layer.name,
                  "pack it with cairn-module pack, which writes that file");
    }
    return {};
  };
  c.merged = [](const std::filesystem::path& merged, const std::vector<Layer>& layers) -> Status {
    struct statfs st{};
    if (::statfs(merged.c_str(), &st) != 0 || st.f_type != kOverlayfsMagic) {
      return fail(Errc::io, "new union at " + merged.string() + " is not an overlayfs mount");
    }
    for (const auto& layer : layers) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(release_file(merged, layer.name), ec)) {
        return fail(Errc::io, "new union at " + merged.string() + " does not show module " + layer.name + "'s extension-release file");
      }
    }
    return {};
  };
  return c;
}

Result<std::vector<Layer>> select_layers(const std::vector<Layer>& desired, const std::vector<Exclusion>& bad_in,
                                         std::vector<Exclusion>& excluded) {
  std::map<std::string, const Layer*> by_name;
  for (const auto& l : desired) {
    if (!by_name.emplace(l.name, &l).second) {
      return fail(Errc::data, "module " + l.name + " is in the set twice", "attach one version of a module at a time");
    }
  }
  std::map<std::string, std::string> bad;
  for (const auto& b : bad_in) bad.emplace(b.name, b.reason);
  // A dependency outside the set makes its dependant bad, which may in turn leave a
  // dependency missing for another: iterate to a fixed point (bounded by the set's size).
  for (bool changed = true; changed;) {
    changed = false;
    for (const auto& l : desired) {
      if (bad.contains(l.name)) continue;
      for (const auto& d : l.depends) {
        if (!by_name.contains(d)) {
          bad.emplace(l.name, "depends on module " + d + ", which is not in the set");
          changed = true;
          break;
        }
      }
    }
  }
  for (const auto& l : desired) {
    auto it = bad.find(l.name);
    if (it == bad.end()) continue;
    if (l.required) {
      return fail(Errc::refused, "required module " + l.name + " is bad: " + it->second,
                  "fix or replace that module; the union is left as it was");
    }
    for (const auto& other : desired) {
      if (bad.contains(other.name)) continue;
      if (std::find(other.depends.begin(), other.depends.end(), l.name) != other.depends.end()) {
        return fail(Errc::refused, "module " + l.name + " is bad (" + it->second + ") and module " + other.name + " depends on it",
                    "fix or replace " + l.name + "; the union is left as it was");
      }
    }
  }
  std::vector<Layer> out;
  for (const auto& l : desired) {
    if (auto it = bad.find(l.name); it != bad.end()) {
      excluded.push_back({l.name, it->second});
    } else {
      out.push_back(l);
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const Layer& a, const Layer& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.name < b.name;
  });
  return out;
}

Result<UnionState> UnionManager::load_state() const {
  auto text = read_file_if_exists(paths_.run_dir / "union.json", kMaxStateBytes);
  if (!text) return fail(text.error());
  if (!*text) return UnionState{.generation = 0, .mount_point = paths_.mount_point, .upper_mode = paths_.upper_mode, .layers = {}};
  auto j = parse_json(**text, (paths_.run_dir / "union.json").string());
  if (!j) return fail(j.error());
  return union_state_from_json(*j);
}

Status UnionManager::rollback(const std::vector<std::filesystem::path>& fresh) {
  Status result;
  for (const auto& dir : fresh) {
    if (auto ok = mounter_.unmount(dir, false); !ok) {
      log::error("modules.rollback_unmount_failed", {{"dir", dir.string()}, {"error", ok.error().message}});
      if (result) result = ok;
      continue;
    }
    remove_tree(dir);
  }
  return result;
}

void UnionManager::retire_previous(const UnionState& state, const std::set<std::filesystem::path>& keep) {
  if (state.previous.empty()) return;
  auto mounted = mounter_.is_mount_point(state.previous);
  if (mounted && *mounted) {
    if (auto ok = mounter_.unmount(state.previous, true); !ok) {
      log::warn("modules.old_generation_unmount_failed", {{"dir", state.previous.string()}, {"error", ok.error().message}});
      return;  // its layers stay too: the next change or teardown tries again
    }
  }
  remove_tree(state.previous);
  for (const auto& dir : state.previous_layers) {
    if (keep.contains(dir)) continue;
    auto layer_mounted = mounter_.is_mount_point(dir);
    if (layer_mounted && *layer_mounted) {
      if (auto ok = mounter_.unmount(dir, true); !ok) {
        log::warn("modules.layer_unmount_failed", {{"dir", dir.string()}, {"error", ok.error().message}});
        continue;
      }
    }
    remove_tree(dir);
  }
  const auto base = state.upper_mode == UpperMode::persist ? paths_.persist_upper : paths_.run_dir / "upper";
  remove_tree(base / ("work-" + std::to_string(state.previous_generation)));
}

void UnionManager::sweep_stale(const UnionState& state) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(paths_.run_dir, ec)) {
    const auto name = entry.path().filename().string();
    if (!name.starts_with("gen-") && !name.starts_with("staging-")) continue;
    if (entry.path() == state.merged || entry.path() == state.previous) continue;
    auto mounted = mounter_.is_mount_point(entry.path());
    if (mounted && *mounted) {
      if (auto ok = mounter_.unmount(entry.path(), true); !ok) {
        log::warn("modules.stale_generation_unmount_failed", {{"dir", entry.path().string()}, {"error", ok.error().message}});
        continue;
      }
    }
    log::info("modules.stale_generation_removed", {{"dir", entry.path().string()}});
    remove_tree(entry.path());
  }
}

Result<std::filesystem::path> UnionManager::prepare_upper_base() {
  if (paths_.upper_mode == UpperMode::persist) {
    if (auto ok = make_dirs(paths_.persist_upper); !ok) return fail(ok.error());
    return paths_.persist_upper;
  }
  const auto base = paths_.run_dir / "upper";
  if (auto ok = make_dirs(base); !ok) return fail(ok.error());
  auto mounted = mounter_.is_mount_point(base);
  if (!mounted) return fail(mounted.error());
  if (!*mounted) {
    if (auto ok = mounter_.mount_tmpfs(base); !ok) return fail(ok.error());
  }
  return base;
}

Result<UnionOutcome> UnionManager::apply(const std::vector<Layer>& desired, const UnionChecks& checks) {
  for (const auto& l : desired) {
    if (!valid_module_name(l.name)) {
      return fail(Errc::data, "module name '" + l.name + "': not [a-z0-9][a-z0-9._-]* of at most 64 characters");
    }
  }
  if (auto ok = make_dirs(paths_.run_dir / "layers"); !ok) return fail(ok.error());
  if (auto ok = mounter_.make_private_mount(paths_.run_dir); !ok) return fail(ok.error());
  auto current = load_state();
  if (!current) return fail(current.error());
  if (!current->layers.empty() && current->mount_point != paths_.mount_point) {
    return fail(Errc::config, "the union is mounted at " + current->mount_point.string() + ", the configuration names " + paths_.mount_point.string(),
                "detach every module before moving the union mount point");
  }
  sweep_stale(*current);
  const std::uint64_t gen = current->generation + 1;
  std::set<std::filesystem::path> kept_dirs;
  for (const auto& l : current->layers) kept_dirs.insert(l.dir);
  // The kept previous generation's own layers are still mounted: a set that takes one of them
  // back reuses the mount.
  kept_dirs.insert(current->previous_layers.begin(), current->previous_layers.end());

  // 1. Each layer mounted (or its mount reused), checked; failures become exclusions.
  std::vector<std::filesystem::path> fresh;
  std::vector<Exclusion> bad;
  std::map<std::string, std::filesystem::path> dirs;
  for (const auto& layer : desired) {
    const auto dir = layer_dir(paths_, layer);
    dirs[layer.name] = dir;
    if (kept_dirs.contains(dir)) {
      auto mounted = mounter_.is_mount_point(dir);
      if (mounted && *mounted) continue;
    }
    if (auto ok = checks.before_mount ? checks.before_mount(layer) : Status{}; !ok) {
      bad.push_back({layer.name, ok.error().message});
      continue;
    }
    if (auto ok = make_dirs(dir); !ok) {
      (void)rollback(fresh);
      return fail(ok.error());
    }
    if (auto ok = mounter_.mount_image(layer.image, dir); !ok) {
      bad.push_back({layer.name, ok.error().message});
      remove_tree(dir);
      continue;
    }
    fresh.push_back(dir);
    if (auto ok = checks.mounted_layer ? checks.mounted_layer(layer, dir) : Status{}; !ok) {
      bad.push_back({layer.name, ok.error().message});
    }
  }

  // 2. The rules on bad modules.
  UnionOutcome outcome;
  auto selected = select_layers(desired, bad, outcome.excluded);
  if (!selected) {
    (void)rollback(fresh);
    return fail(selected.error());
  }
  if (selected->empty() && !desired.empty()) {
    (void)rollback(fresh);
    std::string reasons;
    for (const auto& e : outcome.excluded) reasons += (reasons.empty() ? "" : "; ") + e.name + ": " + e.reason;
    return fail(Errc::refused, "no module of the set can be mounted (" + reasons + ")", "the union is left as it was");
  }
  std::set<std::filesystem::path> selected_dirs;
  for (const auto& l : *selected) selected_dirs.insert(dirs[l.name]);
  {
    // Mounted here but left out by the rules: not part of the new union.
    std::vector<std::filesystem::path> unused;
    std::vector<std::filesystem::path> still_fresh;
    for (const auto& d : fresh) (selected_dirs.contains(d) ? still_fresh : unused).push_back(d);
    (void)rollback(unused);
    fresh = std::move(still_fresh);
  }

  UnionState next{.generation = gen, .mount_point = paths_.mount_point, .upper_mode = paths_.upper_mode, .layers = {}};
  for (const auto& l : *selected) next.layers.push_back({l.name, l.version, l.priority, l.image_digest, dirs[l.name]});

  auto old_mounted = mounter_.is_mount_point(current->layers.empty() ? paths_.mount_point : current->live_path());
  if (!old_mounted) {
    (void)rollback(fresh);
    return fail(old_mounted.error());
  }
  const bool had_union = !current->layers.empty() && *old_mounted;
  // Without MOVE_MOUNT_BENEATH: generation directories and a symlink (never for a union at "/").
  const bool via_link = !paths_.direct && !paths_.mount_point.relative_path().empty() && !mounter_.can_move_beneath();

  if (!selected->empty()) {
    // 3. The new union at a staging path, checked.
    auto base = prepare_upper_base();
    if (!base) {
      (void)rollback(fresh);
      return fail(base.error());
    }
    const auto upper = *base / "upper";
    const auto work = *base / ("work-" + std::to_string(gen));
    remove_tree(work);
    const auto staging = paths_.run_dir / ((via_link ? "gen-" : "staging-") + std::to_string(gen));
    for (const auto& d : {upper, work, staging, via_link ? paths_.mount_point.parent_path() : paths_.mount_point}) {
      if (auto ok = make_dirs(d); !ok) {
        (void)rollback(fresh);
        return fail(ok.error());
      }
    }
    std::vector<std::filesystem::path> lowers;
    for (const auto& l : next.layers) lowers.push_back(l.dir);
    if (auto ok = mounter_.mount_overlay(lowers, upper, work, staging); !ok) {
      (void)rollback(fresh);
      remove_tree(work);
      remove_tree(staging);
      return fail(ok.error().with_context("new union (the old one stays)"));
    }
    const auto undo_staging = [&] {
      (void)mounter_.unmount(staging, true);
      remove_tree(staging);
      remove_tree(work);
      (void)rollback(fresh);
    };
    if (auto ok = checks.merged ? checks.merged(staging, *selected) : Status{}; !ok) {
      undo_staging();
      return fail(ok.error().with_context("new union (the old one stays)"));
    }
    // 4. The switch: beneath the old union, then the old one off the top. Without
    // MOVE_MOUNT_BENEATH: the symlink swapped to the new generation, then the old one off.
    if (via_link) {
      if (auto ok = swap_link(mounter_, paths_.mount_point, staging); !ok) {
        undo_staging();
        return fail(ok.error().with_context("new union (the old one stays)"));
      }
      next.merged = staging;
      // The generation before the old one goes now; the old one stays mounted until the next
      // change, with the layers only it uses, so a reader that resolved the link just before
      // the swap still sees its files (h-modpolicy).
      std::set<std::filesystem::path> in_use = selected_dirs;
      for (const auto& l : current->layers) in_use.insert(l.dir);
      retire_previous(*current, in_use);
      if (had_union && !current->merged.empty()) {
        next.previous = current->merged;
        next.previous_generation = current->generation;
        for (const auto& l : current->layers) {
          if (!selected_dirs.contains(l.dir)) next.previous_layers.push_back(l.dir);
        }
      }
    } else if (auto ok = mounter_.move_mount(staging, paths_.mount_point, had_union); !ok) {
      undo_staging();
      return fail(ok.error().with_context("new union (the old one stays)"));
    }
    if (!via_link) remove_tree(staging);
    if (had_union && !via_link) {
      if (auto ok = mounter_.unmount(paths_.mount_point, true); !ok) {
        // The new union sits beneath the old one: save the new state so the next change
        // or teardown knows the new layers, and say so.
        (void)write_file_atomic(paths_.run_dir / "union.json", dump_json(to_json(next), 2));
        return fail(ok.error().with_context("switch to the new union (it is mounted beneath the old one)"));
      }
    }
  } else if (had_union) {
    if (auto ok = mounter_.unmount(current->live_path(), true); !ok) return fail(ok.error().with_context("unmount the union"));
    if (!current->merged.empty()) {
      remove_link(paths_.mount_point);
      remove_tree(current->merged);
    }
    retire_previous(*current, {});
  }

  // 5. The old union is gone: its layers that the new one does not use, and its work dir.
  const std::set<std::filesystem::path> kept_for_previous(next.previous_layers.begin(), next.previous_layers.end());
  for (const auto& l : current->layers) {
    if (selected_dirs.contains(l.dir) || kept_for_previous.contains(l.dir)) continue;
    auto mounted = mounter_.is_mount_point(l.dir);
    if (mounted && *mounted) {
      if (auto ok = mounter_.unmount(l.dir, true); !ok) {
        log::warn("modules.layer_unmount_failed", {{"dir", l.dir.string()}, {"error", ok.error().message}});
        continue;
      }
    }
    remove_tree(l.dir);
  }
  if (current->generation > 0 && next.previous.empty()) {  // a kept generation keeps its work dir
    const auto old_base = current->upper_mode == UpperMode::persist ? paths_.persist_upper : paths_.run_dir / "upper";
    remove_tree(old_base / ("work-" + std::to_string(current->generation)));
  }
  if (auto ok = write_file_atomic(paths_.run_dir / "union.json", dump_json(to_json(next), 2)); !ok) return fail(ok.error());
  if (next.layers.empty()) {
    // No union left: the ephemeral upper goes with it, and the run dir's own mount.
    for (const auto& [dir, lazy] : {std::pair{paths_.run_dir / "upper", true}, std::pair{paths_.run_dir, false}}) {
      auto mounted = mounter_.is_mount_point(dir);
      if (mounted && *mounted) {
        if (auto ok = mounter_.unmount(dir, lazy); !ok) log::warn("modules.cleanup_failed", {{"path", dir.string()}, {"error", ok.error().message}});
      }
    }
  }
  outcome.state = std::move(next);
  for (const auto& e : outcome.excluded) log::warn("modules.excluded", {{"module", e.name}, {"reason", e.reason}});
  return outcome;
}

Status UnionManager::teardown() {
  auto current = load_state();
  if (!current) return fail(current.error());
  const auto unmount_if = [&](const std::filesystem::path& p, bool lazy) -> Status {
    auto mounted = mounter_.is_mount_point(p);
    if (!mounted) return fail(mounted.error());
    if (*mounted) return mounter_.unmount(p, lazy);
    return {};
  };
  if (!current->layers.empty()) {
    if (auto ok = unmount_if(current->live_path(), true); !ok) return ok;
    if (!current->merged.empty()) {
      remove_link(current->mount_point);
      remove_tree(current->merged);
    }
  }
  retire_previous(*current, {});
  for (const auto& l : current->layers) {
    if (auto ok = unmount_if(l.dir, true); !ok) return ok;
    remove_tree(l.dir);
  }
  sweep_stale(UnionState{});
  if (auto ok = unmount_if(paths_.run_dir / "upper", true); !ok) return ok;
  if (current->generation > 0 && current->upper_mode == UpperMode::persist) {
    remove_tree(paths_.persist_upper / ("work-" + std::to_string(current->generation)));
  }
  std::error_code ec;
  std::filesystem::remove(paths_.run_dir / "union.json", ec);
  return unmount_if(paths_.run_dir, false);
}

}  // namespace cairn::agent::modules
