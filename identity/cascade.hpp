// Identity discovery (DESIGN.md, "Boot flow" step 2): the sources in order, first answer
// wins, every attempt recorded with its outcome, reason and time, the whole run bounded.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "identity/platform_hint.hpp"
#include "identity/source.hpp"

namespace cairn::identity {

struct Config {
  Root root;
  // The persist root as a host path; identity.json lives in <persist_dir>/cairn/.
  // Empty means <root>/persist.
  std::filesystem::path persist_dir;
  std::map<std::string, std::string> base_urls;  // source name ("aws", "gcp", ...) -> base URL
  std::vector<std::string> forced_clouds;        // probe these without a DMI hint
  // Bounds that keep a boot from hanging: a cloud source gets source_timeout in all (its
  // connects connect_timeout each); all clouds together get cloud_budget, so even with
  // every cloud forced and none answering the cascade ends well under 2 s.
  std::chrono::milliseconds connect_timeout{250};
  std::chrono::milliseconds source_timeout{600};
  std::chrono::milliseconds cloud_budget{1200};
  std::size_t max_response_bytes = 64 * 1024;  // metadata answers are small; more is wrong

  [[nodiscard]] std::filesystem::path identity_file() const;
};

// Reads the "identity" section of agent.json on top of `defaults`:
//   {"base_urls": {"aws": "http://127.0.0.1:8080"}, "clouds": ["aws"],
//    "connect_timeout_ms": 250, "source_timeout_ms": 600, "cloud_budget_ms": 1200,
//    "max_response_bytes": 65536}
// Unknown keys, unknown source names and out-of-range numbers are Errc::config.
Result<Config> config_from_json(const Json& section, Config defaults);

struct Attempt {
  std::string source;
  Outcome outcome = Outcome::skipped;
  std::string reason;
  std::chrono::microseconds duration{0};
};

struct Discovery {
  std::optional<Identity> identity;  // set when a source answered
  std::optional<Error> error;        // set when none did (the last failure's code)
  std::vector<Attempt> attempts;     // every source, in cascade order
  // When a cloud was hinted or forced but a later source answered: which, and why the
  // cloud did not (its reason blames the clouds' shared budget when that ran out).
  std::vector<std::string> notes;
  PlatformHint hint;
  std::chrono::microseconds total{0};
};

// The sources of DESIGN.md in their order.
std::vector<std::unique_ptr<Source>> default_sources();

// Runs the cascade. `http` is used for every metadata request (tests pass the real curl
// client and point base_urls at fake servers on 127.0.0.1).
Discovery discover(const Config& config, HttpClient& http,
                   const Clock& clock = SystemClock::instance());
Discovery discover(const Config& config, const std::vector<std::unique_ptr<Source>>& sources,
                   HttpClient& http, const Clock& clock = SystemClock::instance());

Json identity_to_json(const Identity& identity);
Json discovery_to_json(const Discovery& discovery);

}  // namespace cairn::identity
