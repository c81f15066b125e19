#include "control/service/auth_cache.hpp"

#include <algorithm>
#include <mutex>
#include <utility>

#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::control {
namespace {

constexpr std::string_view kNodeHint =
    "node endpoints need the node certificate issued at enrollment; run 'cairn-agent enroll'";
constexpr std::string_view kAdminHint =
    "use an admin credential of this cluster (the state dir's admin.crt/admin.key, or one made "
    "with 'cairn-control admin create')";

std::int64_t now_ms(const Clock& clock) { return to_unix_ms(clock.now()); }
std::string time_text(std::int64_t ms) { return format_rfc3339(from_unix_ms(ms)); }

}  // namespace

std::string_view state_name(NodeState s) {
  switch (s) {
    case NodeState::enrolled: return "Enrolled";
    case NodeState::ready: return "Ready";
    case NodeState::unreachable: return "Unreachable";
    case NodeState::revoked: return "Revoked";
  }
  return "Unreachable";
}

void AuthCache::load(const AuthSnapshot& snap) {
  std::unique_lock lock(mutex_);
  for (const auto& n : snap.nodes) {
    auto live = std::make_unique<LiveNode>();
    const bool heard = n.last_seen_ms > 0 && n.last_seen_ms >= n.enrolled_at_ms;
    live->state = n.revoked ? NodeState::revoked : heard ? NodeState::ready : NodeState::enrolled;
    live->last_seen_ms = std::max(n.last_seen_ms, n.enrolled_at_ms);
    nodes_[n.id] = std::move(live);
  }
  for (const auto& c : snap.certs) {
    auto it = nodes_.find(c.node_id);
    if (it == nodes_.end()) continue;
    it->second->serials.push_back(c.serial_hex);
    auto& live = certs_[c.serial_hex];
    live.node_id = c.node_id;
    live.revoked = c.status == CertStatus::revoked;
    live.not_after_ms = c.not_after_ms;
    live.retire_at_ms = c.retire_at_ms.value_or(0);
  }
  for (const auto& c : snap.certs) {
    if (!c.replaced_by || c.retire_at_ms) continue;  // no replacement, or it was used
    auto fresh = certs_.find(*c.replaced_by);
    if (fresh == certs_.end()) continue;
    fresh->second.replaces = c.serial_hex;
    certs_[c.serial_hex].pending = *c.replaced_by;
  }
  for (const auto& a : snap.admins) {
    admins_[a.serial_hex] = LiveAdmin{a.name, a.not_after_ms, a.revoked_at_ms.has_value()};
  }
}

ApiResult<AuthorizedNode> AuthCache::authorize_node(const Peer& peer) const {
  if (!peer.has_cert) {
    return refuse(401, "client_cert_required", "no client certificate presented", std::string(kNodeHint));
  }
  if (peer.is_admin()) {
    return refuse(403, "admin_cert_not_a_node",
                  "certificate '" + peer.subject_cn + "' is an admin certificate, not a node's",
                  std::string(kNodeHint));
  }
  const std::int64_t now = now_ms(clock_);
  std::shared_lock lock(mutex_);
  auto cert = certs_.find(peer.serial_hex);
  if (cert == certs_.end() || cert->second.node_id != peer.subject_cn) {
    return refuse(401, "cert_unknown",
                  "certificate " + peer.serial_hex + " (CN " + peer.subject_cn.substr(0, 64) +
                      ") is not a current node certificate",
                  "it was replaced by a re-enrollment or never issued here; enroll the node again");
  }
  auto node = nodes_.find(cert->second.node_id);
  if (node == nodes_.end() || node->second->state == NodeState::revoked || cert->second.revoked) {
    return refuse(403, "node_revoked", "node " + peer.subject_cn + " has been revoked",
                  "revocation is final for this node id; ask the operator");
  }
  if (cert->second.retire_at_ms != 0 && now >= cert->second.retire_at_ms) {
    return refuse(401, "cert_retired",
                  "certificate " + peer.serial_hex + " was replaced by a rotation and retired at " +
                      time_text(cert->second.retire_at_ms),
                  "use the node's newest certificate (the agent switches after a rotation)");
  }
  if (now >= cert->second.not_after_ms) {
    return refuse(401, "cert_expired",
                  "certificate " + peer.serial_hex + " expired at " + time_text(cert->second.not_after_ms),
                  "enroll the node again with a token bound to its id (token create --expect-id)");
  }
  return AuthorizedNode(cert->second.node_id, peer.serial_hex, !cert->second.replaces.empty());
}

ApiResult<AuthorizedAdmin> AuthCache::authorize_admin(const Peer& peer) const {
  if (!peer.has_cert) {
    return refuse(401, "client_cert_required", "the admin API needs an admin client certificate",
                  std::string(kAdminHint));
  }
  if (!peer.is_admin()) {
    return refuse(403, "not_admin", "certificate '" + peer.subject_cn.substr(0, 64) + "' is not an admin certificate",
                  std::string(kAdminHint));
  }
  const std::string name = peer.subject_cn.substr(kAdminCnPrefix.size());
  const std::int64_t now = now_ms(clock_);
  std::shared_lock lock(mutex_);
  auto it = admins_.find(peer.serial_hex);
  if (it == admins_.end() || it->second.name != name) {
    return refuse(401, "admin_cert_unknown",
                  "admin certificate " + peer.serial_hex + " (" + peer.subject_cn + ") is not known here",
                  std::string(kAdminHint));
  }
  if (it->second.revoked) {
    return refuse(403, "admin_revoked", "admin '" + name + "' has been revoked",
                  "ask another admin for a new credential ('cairn-control admin create')");
  }
  if (now >= it->second.not_after_ms) {
    return refuse(401, "cert_expired", "admin certificate " + peer.serial_hex + " has expired",
                  "ask another admin for a new credential ('cairn-control admin create')");
  }
  return AuthorizedAdmin(name, peer.serial_hex);
}

bool AuthCache::is_revoked(const std::string& node_id) const {
  std::shared_lock lock(mutex_);
  auto it = nodes_.find(node_id);
  return it != nodes_.end() && it->second->state == NodeState::revoked;
}

bool AuthCache::is_current(const std::string& node_id, const std::string& serial) const {
  std::shared_lock lock(mutex_);
  auto it = certs_.find(serial);
  return it != certs_.end() && it->second.node_id == node_id && it->second.retire_at_ms == 0 &&
         it->second.replaces.empty() && !it->second.revoked;
}

std::optional<NodeState> AuthCache::state(const std::string& node_id) const {
  std::shared_lock lock(mutex_);
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) return std::nullopt;
  return it->second->state.load();
}

NodeCounts AuthCache::counts() const {
  NodeCounts counts;
  std::shared_lock lock(mutex_);
  for (const auto& [id, live] : nodes_) {
    switch (live->state.load()) {
      case NodeState::enrolled: ++counts.enrolled; break;
      case NodeState::ready: ++counts.ready; break;
      case NodeState::unreachable: ++counts.unreachable; break;
      case NodeState::revoked: ++counts.revoked; break;
    }
  }
  return counts;
}

std::size_t AuthCache::node_count() const {
  std::shared_lock lock(mutex_);
  return nodes_.size();
}

void AuthCache::enrolled(const std::string& node_id, const CertRecord& cert, std::int64_t now_ms) {
  std::unique_lock lock(mutex_);
  ++generation_;
  auto& live = nodes_[node_id];
  if (!live) live = std::make_unique<LiveNode>();
  // The node's earlier certificates were superseded in the store: forget them, so they
  // authorize nothing from the next request on.
  for (const auto& serial : live->serials) certs_.erase(serial);
  live->serials.assign(1, cert.serial_hex);
  certs_[cert.serial_hex] = LiveCert{node_id, false, cert.not_after_ms, 0, {}, {}};
  live->last_seen_ms = std::max(live->last_seen_ms.load(), now_ms);
  live->state = NodeState::enrolled;
}

void AuthCache::rotated(const std::string& node_id, const std::string& old_serial, const CertRecord& fresh) {
  std::unique_lock lock(mutex_);
  ++generation_;
  auto node = nodes_.find(node_id);
  if (node == nodes_.end()) return;
  auto& serials = node->second->serials;
  if (auto old = certs_.find(old_serial); old != certs_.end()) {
    if (!old->second.pending.empty()) {  // superseded in the store by this rotation
      std::erase(serials, old->second.pending);
      certs_.erase(old->second.pending);
    }
    old->second.pending = fresh.serial_hex;
  }
  serials.push_back(fresh.serial_hex);
  auto& live = certs_[fresh.serial_hex];
  live = LiveCert{node_id, false, fresh.not_after_ms, 0, {}, old_serial};
}

std::optional<std::string> AuthCache::confirm(const std::string& new_serial, std::int64_t retire_at_ms) {
  std::unique_lock lock(mutex_);
  ++generation_;
  auto fresh = certs_.find(new_serial);
  if (fresh == certs_.end() || fresh->second.replaces.empty()) return std::nullopt;
  std::string old_serial = std::exchange(fresh->second.replaces, {});
  if (auto old = certs_.find(old_serial); old != certs_.end()) {
    old->second.retire_at_ms = retire_at_ms;
    old->second.pending.clear();
  }
  return old_serial;
}

void AuthCache::revoked(const std::string& node_id) {
  std::unique_lock lock(mutex_);
  ++generation_;
  auto& live = nodes_[node_id];
  if (!live) live = std::make_unique<LiveNode>();
  live->state = NodeState::revoked;
  for (const auto& serial : live->serials) {
    if (auto c = certs_.find(serial); c != certs_.end()) c->second.revoked = true;
  }
}

bool AuthCache::heard(const std::string& node_id, std::int64_t at_ms) {
  std::shared_lock lock(mutex_);
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) return false;
  auto& live = *it->second;
  std::int64_t prev = live.last_seen_ms.load();
  while (prev < at_ms && !live.last_seen_ms.compare_exchange_weak(prev, at_ms)) {
  }
  NodeState s = live.state.load();
  while (s != NodeState::revoked && s != NodeState::ready &&
         !live.state.compare_exchange_weak(s, NodeState::ready)) {
  }
  return s == NodeState::unreachable;
}

std::vector<AuthCache::Lapse> AuthCache::sweep(std::int64_t now_ms, std::int64_t grace_ms) {
  std::vector<Lapse> lapsed;
  std::shared_lock lock(mutex_);
  for (const auto& [id, live] : nodes_) {
    NodeState s = live->state.load();
    if (s != NodeState::enrolled && s != NodeState::ready) continue;
    const std::int64_t seen = live->last_seen_ms.load();
    if (now_ms - seen <= grace_ms) continue;
    if (!live->state.compare_exchange_strong(s, NodeState::unreachable)) continue;  // changed meanwhile
    // A heartbeat committed between reading last_seen and the exchange wins: undo.
    if (now_ms - live->last_seen_ms.load() <= grace_ms) {
      NodeState expected = NodeState::unreachable;
      live->state.compare_exchange_strong(expected, s);
      continue;
    }
    lapsed.push_back({id, seen});
  }
  return lapsed;
}

void AuthCache::admin_added(const AdminCertRecord& admin) {
  std::unique_lock lock(mutex_);
  ++generation_;
  admins_[admin.serial_hex] = LiveAdmin{admin.name, admin.not_after_ms, admin.revoked_at_ms.has_value()};
}

void AuthCache::admin_revoked(const std::string& name) {
  std::unique_lock lock(mutex_);
  ++generation_;
  for (auto& [serial, admin] : admins_) {
    if (admin.name == name) admin.revoked = true;
  }
}

std::uint64_t AuthCache::generation() const {
  std::shared_lock lock(mutex_);
  return generation_;
}

bool AuthCache::refresh(const AuthSnapshot& snap, std::uint64_t generation) {
  std::unique_lock lock(mutex_);
  if (generation != generation_) return false;
  // Nodes: revocation from the store is final; liveness keeps the newest of what this replica
  // heard and what the store says another replica heard. Nodes are never deleted.
  for (const auto& n : snap.nodes) {
    auto& live = nodes_[n.id];
    const bool heard = n.last_seen_ms > 0 && n.last_seen_ms >= n.enrolled_at_ms;
    const std::int64_t seen = std::max(n.last_seen_ms, n.enrolled_at_ms);
    if (!live) {
      live = std::make_unique<LiveNode>();
      live->state = n.revoked ? NodeState::revoked : heard ? NodeState::ready : NodeState::enrolled;
      live->last_seen_ms = seen;
    } else {
      const std::int64_t before = live->last_seen_ms.load();
      if (seen > before) live->last_seen_ms = seen;
      if (n.revoked) {
        live->state = NodeState::revoked;
      } else if (live->state != NodeState::revoked && seen > before) {
        // heard (or enrolled again) through another replica since this one last knew
        live->state = heard ? NodeState::ready : NodeState::enrolled;
      }
    }
    live->serials.clear();
  }
  // Certificates and admins: the store's view replaces this one (it holds every change made
  // here up to `generation` too).
  certs_.clear();
  for (const auto& c : snap.certs) {
    auto it = nodes_.find(c.node_id);
    if (it == nodes_.end()) continue;
    it->second->serials.push_back(c.serial_hex);
    auto& live = certs_[c.serial_hex];
    live.node_id = c.node_id;
    live.revoked = c.status == CertStatus::revoked || it->second->state == NodeState::revoked;
    live.not_after_ms = c.not_after_ms;
    live.retire_at_ms = c.retire_at_ms.value_or(0);
  }
  for (const auto& c : snap.certs) {
    if (!c.replaced_by || c.retire_at_ms) continue;
    auto fresh = certs_.find(*c.replaced_by);
    if (fresh == certs_.end()) continue;
    fresh->second.replaces = c.serial_hex;
    certs_[c.serial_hex].pending = *c.replaced_by;
  }
  admins_.clear();
  for (const auto& a : snap.admins) {
    admins_[a.serial_hex] = LiveAdmin{a.name, a.not_after_ms, a.revoked_at_ms.has_value()};
  }
  ++refreshes_;
  return true;
}

void AuthCache::start_refresh(Store& store, std::chrono::milliseconds period) {
  stop_refresh();
  {
    std::lock_guard lock(refresh_mutex_);
    refresh_stop_ = false;
  }
  refresher_ = std::thread([this, &store, period] {
    std::unique_lock lock(refresh_mutex_);
    while (!refresh_cv_.wait_for(lock, period, [&] { return refresh_stop_; })) {
      lock.unlock();
      refresh_once(store);
      lock.lock();
    }
  });
}

bool AuthCache::refresh_once(Store& store) {
  // Read before the snapshot: a change committed while it loads moves the number again and
  // the next pass loads once more.
  auto store_generation = store.auth_generation();
  if (!store_generation) log::warn("control.auth_generation_failed", {{"error", store_generation.error().message}});
  const auto mono = clock_.monotonic();
  const bool due = !last_full_refresh_ || mono - *last_full_refresh_ >= kFullRefreshEvery;
  if (store_generation && store_generation_ == *store_generation && !due) {
    ++refresh_skips_;
    return false;
  }
  // A local change between reading the generation and applying wins: load again (a few
  // times; then the next period does it).
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto generation = this->generation();
    auto snap = store.load_auth_snapshot(now_ms(clock_));
    if (!snap) {
      log::warn("control.auth_refresh_failed", {{"error", snap.error().message}});
      return false;
    }
    if (refresh(*snap, generation)) {
      if (store_generation) store_generation_ = *store_generation;
      last_full_refresh_ = mono;
      return true;
    }
  }
  return false;
}

void AuthCache::stop_refresh() {
  {
    std::lock_guard lock(refresh_mutex_);
    refresh_stop_ = true;
  }
  refresh_cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
}

}  // namespace cairn::control
