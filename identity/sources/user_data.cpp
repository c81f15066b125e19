#include "identity/sources/user_data.hpp"

#include <algorithm>

#include "identity/sources/metadata.hpp"

namespace cairn::identity {
namespace {

using std::chrono::milliseconds;

using Fetcher = Result<std::optional<std::string>> (*)(Context&);

Fetcher fetcher_of(std::string_view cloud) {
  if (cloud == "aws") return aws_user_data;
  if (cloud == "gcp") return gcp_user_data;
  if (cloud == "azure") return azure_user_data;
  if (cloud == "digitalocean") return digitalocean_user_data;
  if (cloud == "hetzner") return hetzner_user_data;
  return openstack_user_data;
}

// Why a cloud is asked, or "" when it must not be.
std::string why_asked(const Config& config, const PlatformHint& hint, const std::string& cloud) {
  if (hint.names(cloud)) return "named by the DMI hint";
  if (std::find(config.forced_clouds.begin(), config.forced_clouds.end(), cloud) != config.forced_clouds.end()) {
    return "forced by the configuration";
  }
  if (config.base_urls.contains(cloud)) return "its metadata URL is configured";
  return {};
}

}  // namespace

Result<std::optional<std::string>> fetch_user_data_body(Context& context, HttpRequest request) {
  request.max_response_bytes = kMaxUserDataBytes;
  auto response = context.fetch(request);
  if (!response) {
    if (response.error().code == Errc::data && response.error().message.find("larger than") != std::string::npos) {
      return fail(Errc::data, request.method + " " + request.url + ": user-data larger than " +
                                  std::to_string(kMaxUserDataBytes / 1024) + " KiB",
                  "keep the Cairn configuration in user-data under 64 KiB");
    }
    return fail(response.error());
  }
  if (response->status == 404) return std::optional<std::string>();
  if (response->status < 200 || response->status >= 300) {
    return fail(response->status >= 500 ? Errc::unavailable : Errc::data,
                request.method + " " + request.url + ": HTTP " + std::to_string(response->status),
                "check the metadata base URL of this source");
  }
  if (response->body.empty()) return std::optional<std::string>();
  return std::optional<std::string>(std::move(response->body));
}

UserData fetch_user_data(const Config& config, HttpClient& http, const Clock& clock) {
  UserData out;
  const auto hint = read_platform_hint(config.root);
  const auto start = clock.monotonic();
  const auto cloud_deadline = start + config.cloud_budget;
  for (const auto cloud_name : kClouds) {
    const std::string cloud(cloud_name);
    const auto why = why_asked(config, hint, cloud);
    if (why.empty()) continue;  // never probe a cloud nothing points at
    if (out.cloud) {
      out.attempts.push_back({cloud, Outcome::skipped, "not asked: " + *out.cloud + " had user-data"});
      continue;
    }
    const auto began = clock.monotonic();
    if (began >= cloud_deadline) {
      out.attempts.push_back({cloud, Outcome::skipped,
                              "not asked (" + why + "): the clouds' shared budget is spent"});
      continue;
    }
    Context context(config, hint, http, clock, std::min(began + config.source_timeout, cloud_deadline),
                    "the user-data budget");
    auto text = fetcher_of(cloud)(context);
    if (!text) {
      out.attempts.push_back({cloud, Outcome::failed, text.error().message + " (" + why + ")"});
    } else if (!*text) {
      out.attempts.push_back({cloud, Outcome::skipped, "no user-data (" + why + ")"});
    } else {
      out.attempts.push_back({cloud, Outcome::answered,
                              std::to_string((*text)->size()) + " bytes of user-data (" + why + ")"});
      out.cloud = cloud;
      out.text = std::move(**text);
    }
  }
  return out;
}

}  // namespace cairn::identity
