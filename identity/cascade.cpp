#include "identity/cascade.hpp"

#include <algorithm>

#include "identity/sources/aws.hpp"
#include "identity/sources/azure.hpp"
#include "identity/sources/cmdline.hpp"
#include "identity/sources/digitalocean.hpp"
#include "identity/sources/dmi.hpp"
#include "identity/sources/fw_cfg.hpp"
#include "identity/sources/gcp.hpp"
#include "identity/sources/hetzner.hpp"
#include "identity/sources/local.hpp"
#include "identity/sources/openstack.hpp"
#include "identity/text.hpp"

namespace cairn::identity {
namespace {

using std::chrono::milliseconds;

std::chrono::microseconds since(const Clock& clock, Clock::MonoTime start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock.monotonic() - start);
}

Result<milliseconds> read_ms(const Json& value, std::string_view key) {
  if (!value.is_number_integer() || value.get<long long>() < 1 || value.get<long long>() > 60000) {
    return fail(Errc::config, "identity." + std::string(key) + ": not an integer from 1 to 60000",
                "give the time in milliseconds");
  }
  return milliseconds(value.get<long long>());
}

Status check_cloud_name(const std::string& name, std::string_view where) {
  if (is_cloud_name(name)) return {};
  return fail(Errc::config, std::string(where) + ": unknown cloud '" + name + "'",
              "use one of aws, gcp, azure, digitalocean, hetzner, openstack");
}

// Every string a source hands back is valid UTF-8 from here on: whatever bytes the host or
// a metadata server sent, JSON dumps and the enrollment request can carry the result.
void sanitise(SourceResult& r) {
  r.reason = valid_utf8(r.reason);
  if (r.identity) {
    for (std::string* s : {&r.identity->platform, &r.identity->instance_id, &r.identity->region,
                           &r.identity->zone, &r.identity->instance_type, &r.identity->hostname}) {
      *s = valid_utf8(*s);
    }
  }
  if (r.error) {
    r.error->message = valid_utf8(r.error->message);
    r.error->hint = valid_utf8(r.error->hint);
  }
}

std::string ms_text(milliseconds ms) { return std::to_string(ms.count()) + " ms"; }

// A cloud that was asked (hinted or forced) and did not answer, for the closing notes.
struct MissedCloud {
  std::string name;
  std::string why_asked;  // "named by the DMI hint" / "forced by the configuration"
  std::string reason;
};

}  // namespace

std::string_view outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::answered: return "answered";
    case Outcome::skipped: return "skipped";
    case Outcome::failed: return "failed";
  }
  return "?";
}

SourceResult SourceResult::answered(Identity id, std::string reason) {
  return {Outcome::answered, std::move(reason), std::move(id), std::nullopt};
}
SourceResult SourceResult::skipped(std::string reason) {
  return {Outcome::skipped, std::move(reason), std::nullopt, std::nullopt};
}
SourceResult SourceResult::failed(std::string reason, Errc code) {
  Error error{code, reason, {}};
  return {Outcome::failed, std::move(reason), std::nullopt, std::move(error)};
}
SourceResult SourceResult::failed(const Error& error) {
  return {Outcome::failed, error.message, std::nullopt, error};
}

Context::Context(const Config& config, const PlatformHint& hint, HttpClient& http,
                 const Clock& clock, Clock::MonoTime deadline, std::string budget)
    : config_(config),
      hint_(hint),
      http_(http),
      clock_(clock),
      deadline_(deadline),
      budget_(std::move(budget)) {}

const Root& Context::root() const { return config_.root; }

std::string Context::base_url(std::string_view source, std::string_view fallback) const {
  std::string url(fallback);
  if (auto it = config_.base_urls.find(std::string(source)); it != config_.base_urls.end()) {
    url = it->second;
  }
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

Result<HttpResponse> Context::fetch(HttpRequest request) {
  const auto left = std::chrono::duration_cast<milliseconds>(deadline_ - clock_.monotonic());
  if (left < milliseconds(2)) {
    return fail(Errc::unavailable,
                request.method + " " + request.url + ": not sent, " + budget_ + " is spent");
  }
  request.total_timeout = std::min(request.total_timeout, left);
  request.connect_timeout = std::min({request.connect_timeout, config_.connect_timeout, left});
  request.max_response_bytes = std::min(request.max_response_bytes, config_.max_response_bytes);
  return http_.send(request);
}

std::filesystem::path Config::identity_file() const {
  const auto persist = persist_dir.empty() ? root / "persist" : persist_dir;
  return persist / "cairn" / "identity.json";
}

Result<Config> config_from_json(const Json& section, Config config) {
  if (section.is_null()) return config;
  if (!section.is_object()) {
    return fail(Errc::config, "identity: not a JSON object", "see identity/cascade.hpp");
  }
  for (const auto& [key, value] : section.items()) {
    if (key == "base_urls") {
      if (!value.is_object()) return fail(Errc::config, "identity.base_urls: not an object");
      for (const auto& [name, url] : value.items()) {
        if (auto ok = check_cloud_name(name, "identity.base_urls"); !ok) return fail(ok.error());
        if (!url.is_string() || !(url.get<std::string>().starts_with("http://") ||
                                  url.get<std::string>().starts_with("https://"))) {
          return fail(Errc::config, "identity.base_urls." + name + ": not an http(s) URL",
                      "write e.g. \"http://127.0.0.1:8080\"");
        }
        config.base_urls[name] = url.get<std::string>();
      }
    } else if (key == "clouds") {
      if (!value.is_array()) return fail(Errc::config, "identity.clouds: not an array of names");
      config.forced_clouds.clear();
      for (const auto& name : value) {
        if (!name.is_string()) return fail(Errc::config, "identity.clouds: not an array of names");
        if (auto ok = check_cloud_name(name.get<std::string>(), "identity.clouds"); !ok) {
          return fail(ok.error());
        }
        config.forced_clouds.push_back(name.get<std::string>());
      }
    } else if (key == "connect_timeout_ms" || key == "source_timeout_ms" ||
               key == "cloud_budget_ms") {
      auto ms = read_ms(value, key);
      if (!ms) return fail(ms.error());
      if (key == "connect_timeout_ms") config.connect_timeout = *ms;
      if (key == "source_timeout_ms") config.source_timeout = *ms;
      if (key == "cloud_budget_ms") config.cloud_budget = *ms;
    } else if (key == "max_response_bytes") {
      if (!value.is_number_integer() || value.get<long long>() < 1024 ||
          value.get<long long>() > (16 << 20)) {
        return fail(Errc::config, "identity.max_response_bytes: not an integer from 1024 to 16 MiB");
      }
      config.max_response_bytes = value.get<std::size_t>();
    } else {
      return fail(Errc::config, "identity: unknown key '" + key + "'",
                  "known keys: base_urls, clouds, connect_timeout_ms, source_timeout_ms, "
                  "cloud_budget_ms, max_response_bytes");
    }
  }
  return config;
}

std::vector<std::unique_ptr<Source>> default_sources() {
  std::vector<std::unique_ptr<Source>> s;
  s.push_back(std::make_unique<CmdlineSource>());
  s.push_back(std::make_unique<FwCfgSource>());
  s.push_back(std::make_unique<AwsSource>());
  s.push_back(std::make_unique<GcpSource>());
  s.push_back(std::make_unique<AzureSource>());
  s.push_back(std::make_unique<DigitalOceanSource>());
  s.push_back(std::make_unique<HetznerSource>());
  s.push_back(std::make_unique<OpenStackSource>());
  s.push_back(std::make_unique<DmiSource>());
  s.push_back(std::make_unique<LocalSource>());
  return s;
}

Discovery discover(const Config& config, HttpClient& http, const Clock& clock) {
  return discover(config, default_sources(), http, clock);
}

Discovery discover(const Config& config, const std::vector<std::unique_ptr<Source>>& sources,
                   HttpClient& http, const Clock& clock) {
  const auto start = clock.monotonic();
  Discovery out;
  out.hint = read_platform_hint(config.root);
  const auto cloud_deadline = start + config.cloud_budget;
  const std::string shared_budget =
      "the clouds' shared " + ms_text(config.cloud_budget) + " budget";
  std::vector<MissedCloud> missed;

  for (const auto& source : sources) {
    const std::string name(source->name());
    const auto began = clock.monotonic();
    if (out.identity) {
      out.attempts.push_back({name, Outcome::skipped,
                              "not asked: " + out.identity->source + " answered first", {}});
      continue;
    }
    auto deadline = began + config.source_timeout;
    std::string budget = "the source's " + ms_text(config.source_timeout) + " budget";
    std::string why_asked;
    if (source->is_cloud()) {
      const bool forced = std::find(config.forced_clouds.begin(), config.forced_clouds.end(),
                                    name) != config.forced_clouds.end();
      if (!forced && !out.hint.names(name)) {
        out.attempts.push_back({name, Outcome::skipped, "no DMI hint for " + name, {}});
        continue;
      }
      why_asked = out.hint.names(name) ? "named by the DMI hint" : "forced by the configuration";
      if (began >= cloud_deadline) {
        const std::string reason = "not asked: " + shared_budget + " is spent";
        out.attempts.push_back({name, Outcome::skipped, reason, {}});
        missed.push_back({name, why_asked, reason});
        continue;
      }
      if (cloud_deadline < deadline) {
        deadline = cloud_deadline;
        budget = shared_budget;
      }
    }
    Context context(config, out.hint, http, clock, deadline, budget);
    SourceResult result = source->probe(context);
    sanitise(result);
    // A source that failed with its time used up was stopped by the budget, whatever the
    // transport's message says: name the budget, the shared one in particular.
    if (result.outcome == Outcome::failed && clock.monotonic() + milliseconds(2) >= deadline &&
        budget == shared_budget && result.reason.find(shared_budget) == std::string::npos) {
      result.reason += " (" + shared_budget + " ran out)";
      if (result.error) result.error->message = result.reason;
    }
    out.attempts.push_back({name, result.outcome, result.reason, since(clock, began)});
    if (result.outcome == Outcome::answered && result.identity) {
      out.identity = std::move(result.identity);
      out.identity->source = name;
    } else if (result.outcome == Outcome::failed && result.error) {
      out.error = result.error->with_context("identity source " + name);
    }
    if (!why_asked.empty() && result.outcome != Outcome::answered) {
      missed.push_back({name, why_asked, result.reason});
    }
  }
  if (out.identity) {
    out.error.reset();
    for (const auto& m : missed) {
      out.notes.push_back(m.name + " was " + m.why_asked + " but did not answer (" + m.reason +
                          "); " + out.identity->source + " answered instead, so " + m.name +
                          "'s instance id, region and type are missing");
    }
  } else if (!out.error) {
    out.error = Error{Errc::internal, "identity: no source answered and none failed",
                      "this is a bug: the local source always answers or fails"};
  }
  out.total = since(clock, start);
  return out;
}

Json identity_to_json(const Identity& id) {
  return {{"uuid", id.uuid.str()},         {"source", id.source},
          {"platform", id.platform},       {"instance_id", id.instance_id},
          {"region", id.region},           {"zone", id.zone},
          {"instance_type", id.instance_type}, {"hostname", id.hostname}};
}

Json discovery_to_json(const Discovery& d) {
  Json attempts = Json::array();
  for (const auto& a : d.attempts) {
    attempts.push_back({{"source", a.source},
                        {"outcome", std::string(outcome_name(a.outcome))},
                        {"reason", a.reason},
                        {"duration_ms", static_cast<double>(a.duration.count()) / 1000.0}});
  }
  return {{"identity", d.identity ? identity_to_json(*d.identity) : Json(nullptr)},
          {"attempts", attempts},
          {"notes", d.notes},
          {"platform_hint",
           {{"sys_vendor", d.hint.dmi.sys_vendor},
            {"product_name", d.hint.dmi.product_name},
            {"chassis_asset_tag", d.hint.dmi.chassis_asset_tag},
            {"bios_vendor", d.hint.dmi.bios_vendor},
            {"bios_version", d.hint.dmi.bios_version},
            {"product_serial", d.hint.dmi.product_serial},
            {"hypervisor_uuid", d.hint.dmi.hypervisor_uuid},
            {"clouds", d.hint.clouds},
            {"notes", d.hint.notes}}},
          {"total_ms", static_cast<double>(d.total.count()) / 1000.0}};
}

}  // namespace cairn::identity
