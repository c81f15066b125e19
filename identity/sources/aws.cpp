#include "identity/sources/aws.hpp"

#include "common/json.hpp"
#include "identity/sources/metadata.hpp"
#include "identity/sources/user_data.hpp"

namespace cairn::identity {
namespace {

// IMDSv2 (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html):
// PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns a session
// token; every GET carries it in X-aws-ec2-metadata-token, and an expired or unknown token
// gets 401. The link-local address is the documented endpoint; only this file names it.
constexpr std::string_view kDefaultBase = "http://169.254.169.254";
constexpr std::string_view kTtlSeconds = "60";  // used at once; a short life limits a leak

class Imds {
 public:
  Imds(Context& context, std::string base) : context_(context), base_(std::move(base)) {}

  Status fetch_token() {
    HttpRequest put;
    put.method = "PUT";
    put.url = base_ + "/latest/api/token";
    put.headers = {{"X-aws-ec2-metadata-token-ttl-seconds", std::string(kTtlSeconds)}};
    auto response = fetch_ok(context_, put);
    if (!response) return fail(response.error().with_context("IMDSv2 session token"));
    if (response->body.empty()) {
      return fail(Errc::data, "IMDSv2 session token: PUT " + put.url + " answered an empty token");
    }
    token_ = response->body;
    return {};
  }

  // GET with the session token; on 401 (the token expired or was revoked) fetches a new
  // token once and retries, then gives up with a clear reason.
  Result<std::string> get(std::string_view path) {
    auto body = get_if_present(path, false);
    if (!body) return fail(body.error());
    return std::move(**body);
  }

  // As get; with missing_ok, a 404 (the path does not exist for this instance) is nullopt.
  Result<std::optional<std::string>> get_if_present(std::string_view path, bool missing_ok,
                                                    std::size_t max_bytes = std::size_t{1} << 20) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (token_.empty() || attempt > 0) {
        if (auto ok = fetch_token(); !ok) return fail(ok.error());
      }
      HttpRequest request;
      request.url = base_ + std::string(path);
      request.headers = {{"X-aws-ec2-metadata-token", token_}};
      request.max_response_bytes = max_bytes;
      auto response = context_.fetch(request);
      if (!response) return fail(response.error());
      if (response->status == 401) continue;
      if (response->status == 404 && missing_ok) return std::optional<std::string>();
      if (response->status != 200) {
        return fail(response->status >= 500 ? Errc::unavailable : Errc::data,
                    "GET " + request.url + ": HTTP " + std::to_string(response->status));
      }
      return std::optional<std::string>(std::move(response->body));
    }
    return fail(Errc::refused, "GET " + base_ + std::string(path) +
                                   ": IMDSv2 refused two fresh session tokens (HTTP 401)",
                "the token expires before use: check the clock and the hop limit");
  }

 private:
  Context& context_;
  std::string base_;
  std::string token_;
};

}  // namespace

SourceResult AwsSource::probe(Context& context) {
  Imds imds(context, context.base_url("aws", kDefaultBase));
  // The instance identity document carries id, region, zone and type in one answer
  // (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-identity-documents.html).
  auto document = imds.get("/latest/dynamic/instance-identity/document");
  if (!document) return SourceResult::failed(document.error());
  auto json = parse_json(*document, "EC2 instance identity document");
  if (!json) return SourceResult::failed(json.error());
  Identity id;
  id.platform = "aws";
  id.instance_id = string_field(*json, "instanceId");
  if (id.instance_id.empty()) {
    return SourceResult::failed("EC2 instance identity document: no \"instanceId\"");
  }
  id.region = string_field(*json, "region");
  id.zone = string_field(*json, "availabilityZone");
  id.instance_type = string_field(*json, "instanceType");
  // The identity document holds no UUID: see cloud_node_uuid for the choice.
  id.uuid = cloud_node_uuid(context, "aws", id.instance_id);
  // The hostname is a nicety: without it the identity stands.
  if (auto hostname = imds.get("/latest/meta-data/local-hostname")) id.hostname = *hostname;
  return SourceResult::answered(std::move(id), "EC2 IMDSv2 instance identity document");
}

// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html:
// GET /latest/user-data answers the text as given at launch, 404 when there is none.
Result<std::optional<std::string>> aws_user_data(Context& context) {
  Imds imds(context, context.base_url("aws", kDefaultBase));
  auto body = imds.get_if_present("/latest/user-data", true, kMaxUserDataBytes);
  if (!body) return fail(body.error());
  if (*body && (*body)->empty()) return std::optional<std::string>();
  return body;
}

}  // namespace cairn::identity
