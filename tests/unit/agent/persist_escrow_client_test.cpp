// The agent's fetch of its escrowed /persist key (issue 15): POST /v1/persist/escrow-key over
// the HttpClient seam, answers scripted by the test.
#include <doctest/doctest.h>

#include "agent/transport/control_client.hpp"
#include "common/crypto.hpp"

using namespace cairn;
using namespace cairn::agent;

namespace {

class ScriptedHttp final : public HttpClient {
 public:
  ScriptedHttp(long status, std::string body, std::vector<HttpRequest>& seen)
      : status_(status), body_(std::move(body)), seen_(seen) {}
  Result<HttpResponse> send(const HttpRequest& request) override {
    seen_.push_back(request);
    HttpResponse r;
    r.status = status_;
    r.body = body_;
    return r;
  }

 private:
  long status_;
  std::string body_;
  std::vector<HttpRequest>& seen_;
};

Result<std::string> fetch(long status, std::string body, std::vector<HttpRequest>& seen) {
  ControlClient client("https://control:8443", std::make_unique<ScriptedHttp>(status, std::move(body), seen));
  return client.escrow_key();
}

}  // namespace

TEST_CASE("the escrow key is fetched with a POST over https and decoded from hex") {
  std::vector<HttpRequest> seen;
  const std::string key(32, '\x5c');
  auto got = fetch(200, R"({"node_id":"n1","key":")" + hex_encode(reinterpret_cast<const unsigned char*>(key.data()), 32) + "\"}",
                   seen);
  REQUIRE_MESSAGE(got.has_value(), got.error().message);
  CHECK(*got == key);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].method == "POST");
  CHECK(seen[0].url == "https://control:8443/v1/persist/escrow-key");
  CHECK(seen[0].protocols == "https");
}

TEST_CASE("a refusal or a malformed answer is an error, never a key") {
  std::vector<HttpRequest> seen;
  auto refused = fetch(401, R"({"error":{"code":"client_cert_required","message":"no certificate","hint":"enroll"}})", seen);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
  CHECK(refused.error().message.find("client_cert_required") != std::string::npos);

  auto unavailable = fetch(503, R"({"error":{"code":"unavailable","message":"busy","hint":""}})", seen);
  REQUIRE_FALSE(unavailable.has_value());
  CHECK(unavailable.error().code == Errc::temporary);

  for (const char* body : {R"({"node_id":"n1"})", R"({"key":"abcd"})", R"({"key":42})", "not json"}) {
    CAPTURE(body);
    auto bad = fetch(200, body, seen);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code == Errc::data);
  }
}
