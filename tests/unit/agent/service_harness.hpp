// The service loop on the system clock against a fake control service, for the tests that let
// it run in real time (tasks, modules): an enrolled node on a temp dir whose run_service runs
// on its own thread until stop(), every request answered by the test's Control behind the
// HttpClient seam. (service_loop_test steps a ManualClock instead.)
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/enroll/credentials.hpp"
#include "agent/runtime/service.hpp"
#include "agent/runtime/stop_signal.hpp"
#include "common/crypto.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

// A fake control's answers: a wire body with 200, or an ErrorBody with its status.
template <class T>
HttpResponse json_answer(const T& body) {
  return HttpResponse{200, {}, dump_json(protocol::to_json(body))};
}
inline HttpResponse error_answer(long status, const std::string& code, const std::string& message) {
  return HttpResponse{status, {}, dump_json(protocol::to_json(protocol::ErrorBody{code, message, ""}))};
}

// POST /v1/events: keeps the batch's events and acknowledges them all. A batch it cannot
// read is answered 400 (this runs on the loop's threads: the test then fails on what it
// waits for), never REQUIREd.
inline HttpResponse record_events(const HttpRequest& req, std::vector<protocol::Event>& events) {
  auto batch = protocol::decode_event_batch(req.body);
  if (!batch) return error_answer(400, "bad_request", batch.error().message);
  events.insert(events.end(), batch->events.begin(), batch->events.end());
  return json_answer(protocol::EventBatchResponse{static_cast<std::int64_t>(batch->events.size()), 0});
}

// The HttpClient the loop gets: every request goes to control.answer().
template <class Control>
class FakeHttp final : public HttpClient {
 public:
  explicit FakeHttp(Control& control) : control_(control) {}
  Result<HttpResponse> send(const HttpRequest& request) override { return control_.answer(request); }

 private:
  Control& control_;
};

// An enrolled node (a fresh CA, an Ed25519 certificate for node_id valid 24 h) whose service
// runs on its own thread from start() until stop(), on the system clock with the jitter fixed
// at 0.5. A test sets `config` and `options` before start().
template <class Control>
class ServiceNode {
 public:
  explicit ServiceNode(const std::string& node_id) {
    log::set_min_level(log::Level::critical);  // the loop's warnings are expected here
    config.root = Root(dir_.path());
    config.persist_dir = dir_.path() / "persist";
    config.control_url = "https://control.test:8443";
    using std::chrono::hours;
    const auto now = std::chrono::system_clock::now();
    auto ca_key = *generate_key(KeyType::p256);
    auto ca = *issue_certificate({.common_name = "test CA", .not_before = now - hours(1), .not_after = now + hours(48),
                                  .is_ca = true},
                                 ca_key.get(), nullptr, ca_key.get());
    auto key = *generate_key(KeyType::ed25519);
    auto cert = *issue_certificate({.common_name = node_id, .not_before = now - hours(1), .not_after = now + hours(24),
                                    .client_auth = true},
                                   key.get(), ca.get(), ca_key.get());
    REQUIRE(agent::CredentialStore(config.state_dir())
                .install({*private_key_pem(key.get()), *cert_pem(cert.get()), *cert_pem(ca.get())}));
  }
  ~ServiceNode() { (void)stop(); }
  ServiceNode(const ServiceNode&) = delete;
  ServiceNode& operator=(const ServiceNode&) = delete;

  void start() {
    std::promise<agent::StopSignal*> ready;
    auto stop_ready = ready.get_future();
    thread_ = std::thread([this, ready = std::move(ready)]() mutable {
      agent::StopSignal stop;
      ready.set_value(&stop);
      const std::function<double()> random01 = [] { return 0.5; };
      const agent::HttpClientFactory http = [this](const TlsOptions&) {
        return std::make_unique<FakeHttp<Control>>(control);
      };
      result_ = agent::run_service(config, options, SystemClock::instance(), random01, stop, http);
    });
    stop_ = stop_ready.get();
  }
  // Asks the loop to stop (as SIGTERM does) and returns what run_service returned.
  Status stop() {
    if (thread_.joinable()) {
      stop_->request();
      thread_.join();
    }
    return result_;
  }

  Control control;
  agent::AgentConfig config;
  agent::ServiceOptions options;

 private:
  TempDir dir_;
  std::thread thread_;
  agent::StopSignal* stop_ = nullptr;
  Status result_;
};

}  // namespace cairn::test
