// The service loop on a ManualClock: the real loop, the real credential store on a temp dir,
// and a fake control service behind the HttpClient seam. Every wait of the loop is a sleep on
// the clock, so each test steps it turn by turn and reads the delays it chose.
#include <doctest/doctest.h>
#include <openssl/x509.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/runtime/service.hpp"
#include "agent/runtime/status_file.hpp"
#include "agent/enroll/credentials.hpp"
#include "common/crypto.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/protocol/messages.hpp"
#include "common/time.hpp"
#include "tests/support/manual_clock.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/unit/agent/service_harness.hpp"

using namespace cairn;
using namespace cairn::agent;
using namespace std::chrono;

namespace {

const char* kNode = "7d0e8f52-3a41-4c1b-9d7e-2f6a4b8c1e90";

// A CA and node certificates on the manual clock's time.
struct Pki {
  EvpPkey ca_key = *generate_key(KeyType::p256);
  X509Ptr ca;
  std::string ca_pem;
  explicit Pki(Clock::WallTime now) {
    ca = *issue_certificate({.common_name = "test CA", .not_before = now - hours(1),
                             .not_after = now + hours(24 * 365 * 5), .is_ca = true},
                            ca_key.get(), nullptr, ca_key.get());
    ca_pem = *cert_pem(ca.get());
  }
  // Empty when it cannot (the caller's check fails then; this may run on the loop's thread).
  [[nodiscard]] std::string issue(const EVP_PKEY* key, Clock::WallTime not_before, Clock::WallTime not_after) const {
    auto cert = issue_certificate({.common_name = kNode, .not_before = not_before, .not_after = not_after,
                                   .client_auth = true},
                                  key, ca.get(), ca_key.get());
    return cert ? cert_pem(cert->get()).value_or("") : "";
  }
};

// The control service as the loop sees it through HttpClient: answers scripted by the test,
// requests recorded with the manual time they arrived at. It runs on the loop's thread, so a
// request it cannot read is answered 400 (the loop then fails the test), never REQUIREd.
class FakeControl {
 public:
  FakeControl(const test::ManualClock& clock, const Pki& pki) : clock_(clock), pki_(pki) {}

  struct Heartbeat {
    Clock::WallTime at;
    protocol::HeartbeatRequest request;
  };

  void set_up(bool up) { std::lock_guard l(m_); up_ = up; }
  void set_rotation_works(bool works) { std::lock_guard l(m_); rotation_works_ = works; }
  void set_interval(seconds s) { std::lock_guard l(m_); interval_ = s; }
  std::vector<Heartbeat> heartbeats() const { std::lock_guard l(m_); return heartbeats_; }
  std::vector<Clock::WallTime> rotations() const { std::lock_guard l(m_); return rotations_; }
  std::size_t acked() const { std::lock_guard l(m_); return acked_; }

  Result<HttpResponse> answer(const HttpRequest& req) {
    std::lock_guard l(m_);
    if (req.url.ends_with("/v1/heartbeat")) {
      auto hb = protocol::decode_heartbeat_request(req.body);
      if (!hb) return test::error_answer(400, "bad_request", hb.error().message);
      heartbeats_.push_back({clock_.now(), *hb});
      if (!up_) return fail(Errc::unavailable, "connect to " + req.url + ": Connection refused");
      ++acked_;
      return test::json_answer(protocol::HeartbeatResponse{{}, format_rfc3339(clock_.now()), interval_.count(), false, {}});
    }
    if (req.url.ends_with("/v1/certificates/rotate")) {
      rotations_.push_back(clock_.now());
      if (!rotation_works_) return test::error_answer(503, "store_unavailable", "the certificate store is unavailable");
      auto rotate = protocol::decode_rotate_request(req.body);
      if (!rotate) return test::error_answer(400, "bad_request", rotate.error().message);
      auto csr = parse_csr_pem(rotate->csr_pem);
      if (!csr) return test::error_answer(400, "bad_csr", csr.error().message);
      const auto now = clock_.now();
      protocol::CertificateResponse out;
      out.node_id = kNode;
      out.certificate_pem = pki_.issue(X509_REQ_get0_pubkey(csr->get()), now, now + hours(100));
      out.ca_chain_pem = pki_.ca_pem;
      return test::json_answer(out);
    }
    return test::error_answer(404, "not_found", req.url);
  }

 private:
  const test::ManualClock& clock_;
  const Pki& pki_;
  mutable std::mutex m_;
  bool up_ = true;
  bool rotation_works_ = true;
  seconds interval_{60};
  std::vector<Heartbeat> heartbeats_;
  std::vector<Clock::WallTime> rotations_;
  std::size_t acked_ = 0;
};

// An enrolled node (a 100 h certificate from now) and its service loop on its own thread.
class Node {
 public:
  Node() : pki_(clock_.now()), control_(clock_, pki_) {
    log::set_min_level(log::Level::critical);  // the loop's warnings are expected here
    config_.root = Root(dir_.path());
    config_.persist_dir = dir_.path() / "persist";
    config_.control_url = "https://control.test:8443";
    auto key = *generate_key(KeyType::ed25519);
    const auto now = clock_.now();
    cert_not_after_ = now + hours(100);
    CredentialStore store(config_.state_dir());
    REQUIRE(store.install({*private_key_pem(key.get()), pki_.issue(key.get(), now, cert_not_after_), pki_.ca_pem}));
    options_.min_backoff = seconds(1);
    options_.max_backoff = seconds(8);
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node() { stop(); }

  // The jitter draws, in order: one when the credentials load (rotation), one per failure.
  void script_jitter(std::deque<double> values) {
    std::lock_guard l(jitter_mutex_);
    jitter_ = std::move(values);
  }

  // Starts the loop and waits until its first turn is done (it sleeps).
  void start() {
    std::promise<StopSignal*> ready;
    auto stop_ready = ready.get_future();
    thread_ = std::thread([this, ready = std::move(ready)]() mutable {
      StopSignal stop;
      ready.set_value(&stop);
      const std::function<double()> random01 = [this] { return draw(); };
      const HttpClientFactory http = [this](const TlsOptions&) { return std::make_unique<test::FakeHttp<FakeControl>>(control_); };
      result_ = run_service(config_, options_, clock_, random01, stop, http);
    });
    stop_ = stop_ready.get();
    REQUIRE_MESSAGE(clock_.wait_for_sleeper(), "the loop never slept after its first heartbeat");
  }
  // One turn: time moves to the loop's wake-up, and the loop is asleep again.
  void turn() {
    REQUIRE(clock_.advance_to_next_wake());
    REQUIRE_MESSAGE(clock_.wait_for_sleeper(), "the loop did not sleep again");
  }
  // Turns until `done` holds; false if it still does not after `max_turns`.
  bool turn_until(const std::function<bool()>& done, int max_turns = 200) {
    for (int i = 0; i < max_turns && !done(); ++i) turn();
    return done();
  }
  // How long the loop chose to sleep (it is asleep now).
  [[nodiscard]] nanoseconds sleeping_for() const { return clock_.until_next_wake(); }
  void stop() {
    if (!thread_.joinable()) return;
    stop_->request();
    thread_.join();
    CHECK_MESSAGE(result_.has_value(), (result_ ? "" : result_.error().message));
  }

  [[nodiscard]] ServiceStatus status() const {
    auto s = read_status(config_.state_dir());
    REQUIRE(s);
    REQUIRE(s->has_value());
    return **s;
  }
  [[nodiscard]] CertInfo installed_cert() const {
    auto loaded = CredentialStore(config_.state_dir()).load();
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    return (*loaded)->cert;
  }

  test::ManualClock clock_;
  test::TempDir dir_;
  Pki pki_;
  FakeControl control_;
  AgentConfig config_;
  ServiceOptions options_;
  Clock::WallTime cert_not_after_;

 private:
  double draw() {
    std::lock_guard l(jitter_mutex_);
    if (jitter_.empty()) return 0.5;
    const double v = jitter_.front();
    jitter_.pop_front();
    return v;
  }

  std::mutex jitter_mutex_;
  std::deque<double> jitter_;
  std::thread thread_;
  StopSignal* stop_ = nullptr;
  Status result_;
};

// The critical cert.rotation_failing events a heartbeat carried.
std::vector<protocol::Event> rotation_alerts(const protocol::HeartbeatRequest& hb) {
  std::vector<protocol::Event> out;
  for (const auto& e : hb.events) {
    if (e.kind == "cert.rotation_failing") out.push_back(e);
  }
  return out;
}

}  // namespace

TEST_CASE("the loop waits the interval control sets, backs off with bounded jitter while control is away, and resets after a success") {
  Node node;
  // rotation draw, then one draw per failure: both ends of the jitter and between.
  const std::vector<double> draws = {0.0, 1.0, 0.25, 0.75, 0.0, 1.0};
  std::deque<double> script = {0.5};
  script.insert(script.end(), draws.begin(), draws.end());
  script.push_back(1.0);  // the failure after the recovery
  node.script_jitter(script);
  node.control_.set_interval(seconds(60));
  node.start();
  REQUIRE(node.control_.heartbeats().size() == 1);
  CHECK(node.sleeping_for() == seconds(60));

  node.control_.set_up(false);
  milliseconds previous{0};
  for (std::size_t i = 0; i < draws.size(); ++i) {
    CAPTURE(i);
    node.turn();
    CHECK(node.control_.heartbeats().size() == i + 2);
    // Full delay: 1 s doubling per failure up to the 8 s maximum; jitter keeps [half, full].
    const auto full = std::min<milliseconds>(seconds(8), milliseconds(1000 << std::min<std::size_t>(i, 10)));
    const auto slept = duration_cast<milliseconds>(node.sleeping_for());
    CHECK(slept >= full / 2);
    CHECK(slept <= full);
    CHECK(slept.count() == static_cast<std::int64_t>(static_cast<double>(full.count()) * (0.5 + 0.5 * draws[i])));
    if (draws[i] == 1.0) CHECK(slept > previous);  // grows at the top of the jitter too
    previous = slept;
  }
  CHECK(node.status().consecutive_failures == static_cast<int>(draws.size()));
  CHECK_FALSE(node.status().last_error.empty());

  node.control_.set_up(true);
  node.turn();
  CHECK(node.sleeping_for() == seconds(60));
  CHECK(node.status().consecutive_failures == 0);
  CHECK(node.status().last_error.empty());

  // The count starts again: the next failure waits the minimum, not the maximum.
  node.control_.set_up(false);
  node.turn();
  CHECK(node.sleeping_for() == seconds(1));
  node.stop();
  CHECK(node.status().heartbeats_acked == 2);
  CHECK(node.control_.acked() == 2);
}

TEST_CASE("rotation happens at 75% of the certificate lifetime, spread by the jitter, and the loop goes on with the new certificate") {
  struct Case {
    double draw;
    hours due;  // of a 100 h certificate: 75% +- 5%
  };
  for (const Case c : {Case{0.5, hours(75)}, Case{0.0, hours(70)}, Case{1.0, hours(80)}, Case{0.3, hours(73)}}) {
    CAPTURE(c.draw);
    Node node;
    node.script_jitter({c.draw});
    node.control_.set_interval(seconds(3600));
    const auto enrolled_at = node.clock_.now();
    const auto first_serial = node.installed_cert().serial_hex;
    node.start();
    REQUIRE(node.turn_until([&] { return !node.control_.rotations().empty(); }, 90));
    const auto rotations = node.control_.rotations();
    REQUIRE(rotations.size() == 1);
    CHECK(rotations[0] == enrolled_at + c.due);  // the first turn at or after the due time
    const auto cert = node.installed_cert();
    CHECK(cert.serial_hex != first_serial);
    CHECK(cert.not_after == node.clock_.now() + hours(100));
    // The heartbeat of that turn already reports the new certificate; no rotation follows.
    node.turn();
    node.turn();
    CHECK(node.control_.heartbeats().back().request.cert_not_after == format_rfc3339(cert.not_after));
    CHECK(node.control_.rotations().size() == 1);
    CHECK(node.status().cert_serial == cert.serial_hex);
    CHECK(node.status().rotation_failures == 0);
  }
}

TEST_CASE("a failed rotation is retried every turn; from the second failure in a row one critical cert.rotation_failing event id lasts until a success") {
  Node node;
  node.script_jitter({0.5});
  node.control_.set_interval(seconds(3600));
  node.control_.set_rotation_works(false);
  const auto enrolled_at = node.clock_.now();
  const auto first_serial = node.installed_cert().serial_hex;
  node.start();
  REQUIRE(node.turn_until([&] { return !node.control_.rotations().empty(); }));
  REQUIRE(node.clock_.now() == enrolled_at + hours(75));

  // First failure: retried, but no alert yet.
  CHECK(node.control_.rotations().size() == 1);
  CHECK(rotation_alerts(node.control_.heartbeats().back().request).empty());
  CHECK(node.status().rotation_failures == 1);

  // Second failure in a row: the critical event, on every heartbeat, under one id.
  node.turn();
  CHECK(node.control_.rotations().size() == 2);
  auto alerts = rotation_alerts(node.control_.heartbeats().back().request);
  REQUIRE(alerts.size() == 1);
  const auto episode = alerts[0].id;
  CHECK_FALSE(episode.empty());
  CHECK(alerts[0].severity == "critical");
  CHECK(alerts[0].message.find("failed 2 times") != std::string::npos);
  CHECK(alerts[0].message.find("store_unavailable") != std::string::npos);  // control's reason
  CHECK(node.status().rotation_failing_event_id == episode);
  for (int i = 3; i <= 5; ++i) {
    CAPTURE(i);
    node.turn();
    CHECK(node.control_.rotations().size() == static_cast<std::size_t>(i));
    alerts = rotation_alerts(node.control_.heartbeats().back().request);
    REQUIRE(alerts.size() == 1);
    CHECK(alerts[0].id == episode);
    CHECK(alerts[0].message.find("failed " + std::to_string(i) + " times") != std::string::npos);
  }
  CHECK(node.installed_cert().serial_hex == first_serial);  // still on the enrolled certificate

  // Success ends the episode: no more alerts, counters cleared.
  node.control_.set_rotation_works(true);
  node.turn();
  CHECK(node.control_.rotations().size() == 6);
  CHECK(rotation_alerts(node.control_.heartbeats().back().request).empty());
  CHECK(node.installed_cert().serial_hex != first_serial);
  CHECK(node.status().rotation_failures == 0);
  CHECK(node.status().rotation_failing_event_id.empty());

  // The next certificate's rotation fails twice again: a new episode, a new id.
  node.control_.set_rotation_works(false);
  const auto rotated_at = node.clock_.now();
  REQUIRE(node.turn_until([&] { return node.control_.rotations().size() == 8; }));
  CHECK(node.clock_.now() == rotated_at + hours(76));  // 75 h due, then one retry
  alerts = rotation_alerts(node.control_.heartbeats().back().request);
  REQUIRE(alerts.size() == 1);
  CHECK(alerts[0].id != episode);
  CHECK_FALSE(alerts[0].id.empty());
}

TEST_CASE("a certificate control issued but the node could not store is installed on a later turn, without asking control again") {
  Node node;
  node.control_.set_interval(seconds(3600));
  const auto first_serial = node.installed_cert().serial_hex;
  // A directory where the store puts its temporary symlink: installing fails (EEXIST), as a
  // read-only or full persist volume would, even for root.
  const auto blocker = node.config_.state_dir() / "certs/.current.tmp";
  std::filesystem::create_directories(blocker / "in-the-way");
  node.start();
  REQUIRE(node.turn_until([&] { return !node.control_.rotations().empty(); }));
  const auto issued_at = node.clock_.now();
  CHECK(node.installed_cert().serial_hex == first_serial);
  CHECK(node.status().rotation_failures == 1);
  node.turn();
  CHECK(node.status().rotation_failures == 2);
  CHECK(node.control_.rotations().size() == 1);  // the retry installs; it does not ask again
  REQUIRE(rotation_alerts(node.control_.heartbeats().back().request).size() == 1);
  CHECK(rotation_alerts(node.control_.heartbeats().back().request)[0].message.find("install") != std::string::npos);

  std::filesystem::remove_all(blocker);
  node.turn();
  CHECK(node.control_.rotations().size() == 1);
  const auto cert = node.installed_cert();
  CHECK(cert.serial_hex != first_serial);
  CHECK(cert.not_after == issued_at + hours(100));  // the certificate issued two turns ago
  CHECK(node.status().rotation_failures == 0);
  CHECK(rotation_alerts(node.control_.heartbeats().back().request).empty());
}

TEST_CASE("a restarted service keeps the rotation failure episode and its event id, and the count of acknowledged heartbeats") {
  Node node;
  node.control_.set_interval(seconds(3600));
  node.control_.set_rotation_works(false);
  node.start();
  REQUIRE(node.turn_until([&] { return node.control_.rotations().size() == 2; }));
  const auto alerts = rotation_alerts(node.control_.heartbeats().back().request);
  REQUIRE(alerts.size() == 1);
  const auto acked = node.status().heartbeats_acked;
  CHECK(acked == node.control_.acked());
  node.stop();

  node.start();  // the first turn of the new run: a third failure, the same episode
  CHECK(node.control_.rotations().size() == 3);
  const auto again = rotation_alerts(node.control_.heartbeats().back().request);
  REQUIRE(again.size() == 1);
  CHECK(again[0].id == alerts[0].id);
  CHECK(again[0].message.find("failed 3 times") != std::string::npos);
  CHECK(node.status().heartbeats_acked == acked + 1);
}

TEST_CASE("the loop leaves on a stop signal while it sleeps, without waiting for its clock") {
  Node node;
  node.control_.set_interval(seconds(3600));
  node.start();
  const auto before = node.clock_.now();
  node.stop();  // joins: the loop woke on the signal, the manual clock never moved
  CHECK(node.clock_.now() == before);
  CHECK(node.control_.heartbeats().size() == 1);
}
