// Fake cloud metadata servers on 127.0.0.1 that enforce each cloud's real rules (AWS IMDSv2
// session tokens with a TTL, GCP's Metadata-Flavor, Azure's Metadata header and api-version),
// so the identity sources are tested over real HTTP against the protocol they must speak.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "tests/support/http_server.hpp"

namespace cairn::test {

// What the fake says about "its" machine.
struct FakeInstance {
  std::string uuid;           // Azure vmId / OpenStack uuid
  std::string instance_id;    // EC2 instance id, GCE id, droplet id, Hetzner server id
  std::string region;
  std::string zone;
  std::string instance_type;
  std::string hostname;
};

// The usual answers of each cloud ("aws", "gcp", "azure", "digitalocean", "hetzner",
// "openstack"), shaped like the real ones.
FakeInstance default_fake_instance(const std::string& cloud);

enum class Misbehaviour {
  none,
  http_500,       // every request answers 500
  http_404,       // every request answers 404
  oversized,      // 200 with a 1 MiB body
  malformed,      // 200 with a body that is not what the cloud sends
  never_answer,   // accepts, reads the request, never answers
};

class FakeCloud {
 public:
  explicit FakeCloud(std::string cloud);
  FakeCloud(std::string cloud, FakeInstance instance);

  [[nodiscard]] std::string base_url() const { return server_.base_url(); }
  [[nodiscard]] const FakeInstance& instance() const { return instance_; }
  [[nodiscard]] std::size_t requests() const { return server_.requests(); }
  // Requests refused for breaking the cloud's rules (missing header, bad or expired token).
  [[nodiscard]] std::size_t refused() const { return refused_.load(); }

  void misbehave(Misbehaviour m) { misbehaviour_.store(m); }
  // AWS: the next n session tokens are issued already expired, as if their TTL had elapsed.
  void expire_next_tokens(int n) { expire_next_.store(n); }
  [[nodiscard]] std::size_t tokens_issued() const { return tokens_issued_.load(); }

  // User-data (h-userdata), served where the cloud serves it, under the cloud's rules:
  // AWS /latest/user-data (IMDSv2 token), GCP instance/attributes/<gcp_key> (Metadata-Flavor),
  // Azure compute/userData base64-encoded (Metadata: true, api-version >= 2021-01-01),
  // DigitalOcean /metadata/v1/user-data, Hetzner /hetzner/v1/userdata, OpenStack
  // /openstack/latest/user_data. Unset: the cloud's "none" (404, or empty for Hetzner/Azure).
  void set_user_data(std::string text, std::string gcp_key = "user-data");
  // Azure only: the userData answer exactly as given (not encoded), e.g. garbage.
  void set_raw_azure_user_data(std::string body);
  [[nodiscard]] std::size_t user_data_requests() const { return user_data_requests_.load(); }

 private:
  HttpServer::Response handle(const HttpServer::Request& request);
  HttpServer::Response aws(const HttpServer::Request& request);
  HttpServer::Response gcp(const HttpServer::Request& request);
  HttpServer::Response azure(const HttpServer::Request& request);
  HttpServer::Response digitalocean(const HttpServer::Request& request);
  HttpServer::Response hetzner(const HttpServer::Request& request);
  HttpServer::Response openstack(const HttpServer::Request& request);
  HttpServer::Response refuse(int status, std::string body);
  HttpServer::Response user_data(const HttpServer::Request& request, const std::string& key);

  std::string cloud_;
  FakeInstance instance_;
  std::atomic<Misbehaviour> misbehaviour_{Misbehaviour::none};
  std::atomic<int> expire_next_{0};
  std::atomic<std::size_t> tokens_issued_{0};
  std::atomic<std::size_t> refused_{0};
  std::atomic<std::size_t> user_data_requests_{0};
  std::mutex mutex_;
  std::optional<std::string> user_data_;  // guarded by mutex_
  std::string gcp_user_data_key_ = "user-data";
  bool azure_raw_ = false;
  std::map<std::string, std::chrono::steady_clock::time_point> tokens_;  // token -> expiry
  HttpServer server_;  // last: its threads call handle() and must stop before the rest dies
};

}  // namespace cairn::test
