#include "agent/boot/stages.hpp"

#include <algorithm>

#include "common/log.hpp"

namespace cairn::agent::boot {

bool retryable(const Error& error) {
  return error.code == Errc::unavailable || error.code == Errc::temporary || error.code == Errc::io;
}

BootOrder boot_order(std::string_view persist_mode, std::string_view key_source, bool persist_mounted) {
  // Mounted already (a re-run of the boot): the credentials on /persist are there to use.
  if (persist_mode == "tmpfs" || key_source != "escrow" || persist_mounted) return BootOrder::standard;
  return BootOrder::escrow;
}

std::vector<std::string> stage_order(BootOrder order) {
  if (order == BootOrder::escrow) return {"identity", "enroll", "persist", "modules"};
  return {"identity", "persist", "enroll", "modules"};
}

std::chrono::milliseconds retry_delay(const RetryPolicy& policy, int attempt) {
  auto delay = policy.first_delay;
  for (int i = 2; i < attempt && delay < policy.max_delay; ++i) delay *= 2;
  return std::min(delay, policy.max_delay);
}

StageRunner::StageRunner(const Clock& clock, Wait wait) : clock_(clock), wait_(std::move(wait)) {
  if (!wait_) {
    wait_ = [this](Clock::MonoTime deadline) {
      clock_.sleep_until(deadline);
      return false;
    };
  }
}

Status StageRunner::run(const std::string& name, const RetryPolicy& policy,
                        const std::function<Result<StageOutcome>()>& body) {
  const auto start = clock_.monotonic();
  StageRecord record;
  record.name = name;
  auto elapsed_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_.monotonic() - start).count();
  };
  for (int attempt = 1;; ++attempt) {
    record.attempts = attempt;
    auto outcome = body();
    if (outcome) {
      record.ok = true;
      record.skipped = outcome->skipped;
      record.note = outcome->note;
      record.duration_ms = elapsed_ms();
      log::info("boot.stage", {{"stage", name},
                               {"ok", "true"},
                               {"skipped", record.skipped ? "true" : "false"},
                               {"duration_ms", record.duration_ms},
                               {"attempts", attempt},
                               {"note", record.note}});
      records_.push_back(record);
      return {};
    }
    const Error& error = outcome.error();
    const bool last = policy.max_attempts > 0 && attempt >= policy.max_attempts;
    if (!retryable(error) || last) {
      record.duration_ms = elapsed_ms();
      record.note = error.message;
      log::error("boot.stage", {{"stage", name},
                                {"ok", "false"},
                                {"duration_ms", record.duration_ms},
                                {"attempts", attempt},
                                {"error", error.message},
                                {"hint", error.hint},
                                {"retryable", retryable(error) ? "true" : "false"}});
      records_.push_back(record);
      return fail(error.with_context("boot stage " + name));
    }
    const auto delay = retry_delay(policy, attempt + 1);
    log::warn("boot.retry", {{"stage", name},
                             {"attempt", attempt},
                             {"max_attempts", policy.max_attempts == 0 ? std::string("unlimited")
                                                                       : std::to_string(policy.max_attempts)},
                             {"error", error.message},
                             {"next_attempt_ms", delay.count()}});
    if (wait_(clock_.monotonic() + delay)) {
      record.duration_ms = elapsed_ms();
      record.note = "stopped while waiting to retry";
      records_.push_back(record);
      return fail(Errc::temporary, "boot stage " + name + ": stopped by a signal while waiting to retry (" +
                                       error.message + ")",
                  "");
    }
  }
}

}  // namespace cairn::agent::boot
