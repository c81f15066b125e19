// The authorisation cache: what the service knows in memory about nodes, their current
// certificates and admin credentials, kept in step with the store by the parts that change
// them (enrollment, rotation, revocation, heartbeats, the liveness sweep). authorize_node and
// authorize_admin read it once per request under a shared lock; no store round trip.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/clock.hpp"
#include "control/service.hpp"
#include "control/store/store.hpp"

namespace cairn::control {

enum class NodeState : std::uint8_t { enrolled, ready, unreachable, revoked };
std::string_view state_name(NodeState state);

class AuthCache {
 public:
  explicit AuthCache(const Clock& clock) : clock_(clock) {}
  AuthCache(const AuthCache&) = delete;
  AuthCache& operator=(const AuthCache&) = delete;
  ~AuthCache() { stop_refresh(); }

  // Starts from the store: revoked nodes Revoked, nodes that ever heartbeated since their
  // last enrollment Ready, others Enrolled (the first liveness sweep marks lapsed ones).
  void load(const AuthSnapshot& snapshot);

  [[nodiscard]] ApiResult<AuthorizedNode> authorize_node(const Peer& peer) const;
  [[nodiscard]] ApiResult<AuthorizedAdmin> authorize_admin(const Peer& peer) const;

  [[nodiscard]] bool is_revoked(const std::string& node_id) const;
  // Whether `serial` may rotate: the node's newest certificate in use (not revoked, not
  // retiring; a replacement it got but never used does not count).
  [[nodiscard]] bool is_current(const std::string& node_id, const std::string& serial) const;
  [[nodiscard]] std::optional<NodeState> state(const std::string& node_id) const;
  [[nodiscard]] NodeCounts counts() const;
  [[nodiscard]] std::size_t node_count() const;

  // An enrollment committed: `cert` replaces every earlier certificate of the node.
  void enrolled(const std::string& node_id, const CertRecord& cert, std::int64_t now_ms);
  // A rotation committed: `fresh` authorizes from now on, as its replacement-to-be; an earlier
  // unused replacement of `old_serial` is forgotten.
  void rotated(const std::string& node_id, const std::string& old_serial, const CertRecord& fresh);
  // The node used `new_serial` (a replacement) for the first time: the certificate it
  // replaces retires at retire_at_ms. Returns that certificate's serial, if any.
  std::optional<std::string> confirm(const std::string& new_serial, std::int64_t retire_at_ms);
  void revoked(const std::string& node_id);
  // A heartbeat of the node committed at at_ms: the node is Ready. True if it was
  // Unreachable until now (it came back).
  bool heard(const std::string& node_id, std::int64_t at_ms);

  struct Lapse {
    std::string node_id;
    std::int64_t last_seen_ms;
  };
  // The liveness sweep: Enrolled/Ready nodes not heard from for more than grace_ms turn
  // Unreachable; returns them.
  std::vector<Lapse> sweep(std::int64_t now_ms, std::int64_t grace_ms);

  void admin_added(const AdminCertRecord& admin);
  void admin_revoked(const std::string& name);

  // Replicas (several cairn-control on one PostgreSQL): the others change nodes, certificates
  // and admins behind this cache's back. A refresher thread reloads the store's snapshot every
  // `period` and applies it, so a revocation or an enrollment through another replica holds
  // here within period + one snapshot load. Requests never wait for it (they read the cache
  // as before); the refresh swaps the tables under the unique lock.
  // Each period costs one tiny read (Store::auth_generation): the snapshot is loaded only
  // when that number moved (an enrollment, revocation or rotation somewhere), or every
  // kFullRefreshEvery for the liveness other replicas heard (heartbeats do not move it).
  void start_refresh(Store& store, std::chrono::milliseconds period);
  // One refresher pass now (what the thread does each period); true when it loaded a snapshot.
  bool refresh_once(Store& store);
  static constexpr std::chrono::seconds kFullRefreshEvery{5};
  [[nodiscard]] std::uint64_t refresh_skips() const { return refresh_skips_.load(); }
  void stop_refresh();
  // The count of changes made through this cache; refresh() applies a snapshot only if none
  // happened since `generation` was read (before the snapshot was loaded), so a snapshot
  // never undoes a newer local change. Returns whether it applied.
  [[nodiscard]] std::uint64_t generation() const;
  bool refresh(const AuthSnapshot& snapshot, std::uint64_t generation);
  [[nodiscard]] std::uint64_t refreshes() const { return refreshes_.load(); }

 private:
  struct LiveNode {
    std::atomic<NodeState> state{NodeState::enrolled};
    std::atomic<std::int64_t> last_seen_ms{0};  // last heartbeat, or enrollment before the first
    std::vector<std::string> serials;           // certificates in certs_; changed under the unique lock
  };
  struct LiveCert {
    std::string node_id;
    bool revoked = false;
    std::int64_t not_after_ms = 0;
    std::int64_t retire_at_ms = 0;  // 0: not retiring
    std::string pending;            // its replacement, not used by the node yet
    std::string replaces;           // while unused: the certificate this one replaces
  };
  struct LiveAdmin {
    std::string name;
    std::int64_t not_after_ms = 0;
    bool revoked = false;
  };

  const Clock& clock_;
  mutable std::shared_mutex mutex_;
  std::unordered_map<std::string, LiveCert> certs_;  // serial -> certificate
  std::unordered_map<std::string, std::unique_ptr<LiveNode>> nodes_;
  std::unordered_map<std::string, LiveAdmin> admins_;  // serial -> admin credential
  std::uint64_t generation_ = 0;                        // local changes; under the unique lock

  std::mutex refresh_mutex_;
  std::condition_variable refresh_cv_;
  bool refresh_stop_ = false;
  std::thread refresher_;
  std::atomic<std::uint64_t> refreshes_{0};
  std::atomic<std::uint64_t> refresh_skips_{0};
  // refresh_once's memory (the refresher thread's, or a test's: one caller at a time)
  std::optional<std::int64_t> store_generation_;
  std::optional<Clock::MonoTime> last_full_refresh_;
};

}  // namespace cairn::control
