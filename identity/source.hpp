// The Source interface of the identity cascade: one metadata source is one small class that
// answers with an Identity, says it is not here (skipped), or says what was wrong (failed).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "common/uuid.hpp"
#include "identity/platform_hint.hpp"

namespace cairn::identity {

struct Config;

// Who this node is, and what a fleet operator wants to know about where it runs.
struct Identity {
  Uuid uuid;
  std::string source;         // the source that answered: "cmdline", "aws", "local", ...
  std::string platform;       // "aws", "gcp", ..., "qemu", "bare-metal", "unknown"
  std::string instance_id;    // the platform's own id for the machine, when it has one
  std::string region;
  std::string zone;
  std::string instance_type;
  std::string hostname;
};

enum class Outcome { answered, skipped, failed };
std::string_view outcome_name(Outcome outcome);

// What one source said. `reason` always explains the outcome in words an operator reads.
struct SourceResult {
  Outcome outcome = Outcome::skipped;
  std::string reason;
  std::optional<Identity> identity;  // set exactly when outcome == answered
  std::optional<Error> error;        // set when failed: the code the cascade reports if all fail

  static SourceResult answered(Identity id, std::string reason);
  static SourceResult skipped(std::string reason);
  static SourceResult failed(std::string reason, Errc code = Errc::data);
  static SourceResult failed(const Error& error);  // the error's message is the reason
};

// What a source may use while it runs: the host, the DMI facts, HTTP bounded by the
// source's share of the time budget, the clock.
class Context {
 public:
  // `budget` names what `deadline` comes from, for reasons: "the source's 600 ms" or
  // "the clouds' shared 1200 ms budget".
  Context(const Config& config, const PlatformHint& hint, HttpClient& http, const Clock& clock,
          Clock::MonoTime deadline, std::string budget = "the source's time budget");

  [[nodiscard]] const Config& config() const { return config_; }
  [[nodiscard]] const Root& root() const;
  [[nodiscard]] const PlatformHint& hint() const { return hint_; }
  [[nodiscard]] const Clock& clock() const { return clock_; }
  // The configured base URL of a source (no trailing slash), or its real default.
  [[nodiscard]] std::string base_url(std::string_view source, std::string_view fallback) const;

  // Sends request with its connect/total timeouts and size cap clamped to what is left of
  // this source's time budget. Errc::unavailable without sending when the budget is spent.
  Result<HttpResponse> fetch(HttpRequest request);
  [[nodiscard]] Clock::MonoTime deadline() const { return deadline_; }
  [[nodiscard]] const std::string& budget() const { return budget_; }

 private:
  const Config& config_;
  const PlatformHint& hint_;
  HttpClient& http_;
  const Clock& clock_;
  Clock::MonoTime deadline_;
  std::string budget_;
};

class Source {
 public:
  virtual ~Source() = default;
  [[nodiscard]] virtual std::string_view name() const = 0;
  // Cloud sources are asked only when the DMI hint or the configuration names them.
  [[nodiscard]] virtual bool is_cloud() const { return false; }
  virtual SourceResult probe(Context& context) = 0;
};

}  // namespace cairn::identity
