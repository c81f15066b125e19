// The modules' union: every attached module's EROFS image mounted read-only, stacked as
// overlayfs lowers by priority under one upper (tmpfs or the persist root). A change of the
// set is atomic: the new union is mounted at a staging path and checked, then moved beneath
// the old one (MOVE_MOUNT_BENEATH) and the old one is unmounted from on top of it; any
// failure before that point unmounts what the change mounted and leaves the old union as it
// was. Kernels before 6.5 (Debian 12's 6.1) lack MOVE_MOUNT_BENEATH: there each union is
// mounted at run_dir/gen-N and the mount point is a symlink to it, replaced with rename(2)
// (atomic for every reader). The generation it replaced stays mounted until the next change
// (a reader that resolved the old link a moment before the swap still finds its files), and
// is unmounted then, with the layers only it used; teardown unmounts both, and any other
// gen-N dir (a crashed agent's) is swept at the next change. A union at "/" (boot)
// cannot be a symlink: there a change of a live union still needs MOVE_MOUNT_BENEATH. One bad module is left out with its reason, unless it is required or another module
// of the set depends on it (then the whole change is refused).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/modules/mounter.hpp"
#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::agent::modules {

// One module as the union sees it: a verified image in the store.
struct Layer {
  std::string name;
  std::string version;
  std::int64_t priority = 0;  // higher is stacked higher (wins over lower ones)
  std::string image_digest;   // sha256:<hex> of the image
  std::filesystem::path image;
  bool required = false;              // bad -> the whole change is refused
  std::vector<std::string> depends;   // names of modules that must be in the union too
};

enum class UpperMode { tmpfs, persist };
std::string_view upper_mode_name(UpperMode mode);
Result<UpperMode> parse_upper_mode(std::string_view text);  // "tmpfs" | "persist"

struct UnionPaths {
  std::filesystem::path mount_point;    // where the union is seen
  std::filesystem::path run_dir;        // layer mounts, staging, union.json (<root>/run/cairn/modules)
  std::filesystem::path persist_upper;  // upper + work dirs for UpperMode::persist
  UpperMode upper_mode = UpperMode::tmpfs;
  // The overlay is mounted at mount_point itself, never through a gen-N symlink, whatever the
  // kernel: the boot's union at /sysroot becomes `/` by switch_root, and /run (where gen-N
  // would live) is moved inside it (h-base).
  bool direct = false;
};

struct MountedLayer {
  std::string name;
  std::string version;
  std::int64_t priority = 0;
  std::string image_digest;
  std::filesystem::path dir;  // where its image is mounted
};

// What is mounted now (run_dir/union.json: runtime state, gone with a reboot as the mounts are).
struct UnionState {
  std::uint64_t generation = 0;
  std::filesystem::path mount_point;
  UpperMode upper_mode = UpperMode::tmpfs;
  std::vector<MountedLayer> layers;  // top-most first; empty: no union mounted
  // Without MOVE_MOUNT_BENEATH: where the overlay is mounted (run_dir/gen-N), mount_point being
  // a symlink to it. Empty: the overlay is mounted at mount_point itself.
  std::filesystem::path merged{};
  // Without MOVE_MOUNT_BENEATH: the generation this one replaced, still mounted until the next
  // change (h-modpolicy), with the layer dirs only it uses. Empty: none kept.
  std::filesystem::path previous{};
  std::uint64_t previous_generation = 0;
  std::vector<std::filesystem::path> previous_layers{};
  // Where the overlay of this state is mounted.
  [[nodiscard]] const std::filesystem::path& live_path() const { return merged.empty() ? mount_point : merged; }
};
Json to_json(const UnionState& s);
Result<UnionState> union_state_from_json(const Json& j);

struct Exclusion {
  std::string name;
  std::string reason;
};

struct UnionOutcome {
  UnionState state;
  std::vector<Exclusion> excluded;  // left out, each with its reason
};

struct UnionChecks {
  // Right before a layer's image is mounted: re-verifies the stored image (it may have
  // changed on disk since it was verified).
  std::function<Status(const Layer&)> before_mount;
  // On a freshly mounted layer (default: the image carries
  // usr/lib/extension-release.d/extension-release.NAME, as a systemd-sysext image does).
  std::function<Status(const Layer&, const std::filesystem::path& dir)> mounted_layer;
  // On the new union at its staging path, before it replaces the old one (default: it is an
  // overlayfs and every layer's extension-release file is visible through it).
  std::function<Status(const std::filesystem::path& merged, const std::vector<Layer>& layers)> merged;
};
// The default mounted_layer and merged checks, with the caller's re-verification.
UnionChecks default_checks(std::function<Status(const Layer&)> before_mount);

// The bad-module rules, without mounting: `desired` minus the `bad` ones (name -> reason),
// minus those whose dependency is not in the set; refused when a bad one is required or
// depended on by a module that stays. The result is ordered top-most first (priority
// descending, then name). Appends each left-out module to `excluded`.
Result<std::vector<Layer>> select_layers(const std::vector<Layer>& desired,
                                         const std::vector<Exclusion>& bad,
                                         std::vector<Exclusion>& excluded);

// "[a-z0-9][a-z0-9._-]{0,63}" and not "." or "..": safe in a path and in overlayfs options.
bool valid_module_name(std::string_view name);

class UnionManager {
 public:
  UnionManager(Mounter& mounter, UnionPaths paths) : mounter_(mounter), paths_(std::move(paths)) {}

  // The state of run_dir/union.json; no file: generation 0, nothing mounted.
  Result<UnionState> load_state() const;

  // Makes the union the one of `desired` (see the header comment). An empty `desired`
  // unmounts the union.
  Result<UnionOutcome> apply(const std::vector<Layer>& desired, const UnionChecks& checks);

  // Unmounts the union, every layer, the tmpfs upper and the run dir's own mount.
  Status teardown();

 private:
  Status rollback(const std::vector<std::filesystem::path>& fresh);
  // Unmounts the kept previous generation of `state` and its own layers (except those in
  // `keep`), and removes its work dir.
  void retire_previous(const UnionState& state, const std::set<std::filesystem::path>& keep);
  // gen-N / staging-N dirs of run_dir that `state` does not name (a crashed change's).
  void sweep_stale(const UnionState& state);
  Result<std::filesystem::path> prepare_upper_base();

  Mounter& mounter_;
  UnionPaths paths_;
};

}  // namespace cairn::agent::modules
