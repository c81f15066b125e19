// The stage runner of `cairn-agent boot` (DESIGN.md: identity -> persist -> enroll -> modules
// -> handoff). Each stage is one line on the console when it ends,
//   event=boot.stage stage=enroll ok=true duration_ms=412 attempts=1
// and each failed attempt says what failed and what it waits for before the next one,
//   event=boot.retry stage=enroll attempt=2 error="..." next_attempt_ms=2000
// A stage is retried only while its error is temporary (Errc::unavailable, temporary, io) and
// its policy has attempts left; a configuration or refusal error stops the boot at once with
// its message and hint. Waits go through the Clock and end early on a stop signal.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "common/result.hpp"

namespace cairn::agent::boot {

// What `cairn-agent boot` leaves for /init when it fails: "<stage> <error code name>\n"
// (e.g. "persist refused"), so the console line of /init's retry names the stage.
inline constexpr std::string_view kBootFailedFile = "run/cairn/boot-failed";

struct RetryPolicy {
  int max_attempts = 1;  // 0: no limit (the console keeps saying what it waits for)
  std::chrono::milliseconds first_delay{500};
  std::chrono::milliseconds max_delay{std::chrono::seconds(30)};
};

// What a stage did: "ok" with a note (what it found, or why it skipped).
struct StageOutcome {
  bool skipped = false;
  std::string note;
};

struct StageRecord {
  std::string name;
  bool ok = false;
  bool skipped = false;
  int attempts = 0;
  std::int64_t duration_ms = 0;
  std::string note;
};

// Whether an error is worth another attempt.
bool retryable(const Error& error);

// Delay before attempt `attempt` (2, 3, ...): first_delay * 2^(attempt-2), at most max_delay.
std::chrono::milliseconds retry_delay(const RetryPolicy& policy, int attempt);

// The order of the stages. standard: identity, persist, enroll, modules. escrow (persist on a
// disk with key_source escrow, /persist not mounted yet): the volume key is fetched over mTLS
// with the node's certificate, which would live on the locked volume, so the node enrolls
// first into tmpfs: identity, enroll, persist (which moves the credentials in), modules.
enum class BootOrder { standard, escrow };
BootOrder boot_order(std::string_view persist_mode, std::string_view key_source, bool persist_mounted);
std::vector<std::string> stage_order(BootOrder order);

class StageRunner {
 public:
  // wait(deadline) sleeps until the deadline and returns true if the boot must stop instead
  // (a stop signal); the default sleeps on the clock.
  using Wait = std::function<bool(Clock::MonoTime)>;
  explicit StageRunner(const Clock& clock, Wait wait = {});

  // Runs body until it succeeds, fails for good or runs out of attempts; logs as above.
  Status run(const std::string& name, const RetryPolicy& policy, const std::function<Result<StageOutcome>()>& body);

  [[nodiscard]] const std::vector<StageRecord>& records() const { return records_; }

 private:
  const Clock& clock_;
  Wait wait_;
  std::vector<StageRecord> records_;
};

}  // namespace cairn::agent::boot
