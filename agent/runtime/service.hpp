// The long-lived loop of `cairn-agent service`: heartbeat every interval over mTLS,
// exponential backoff with jitter while the control service is away, certificate rotation
// at 75% of its lifetime (with jitter) retried on every turn until it succeeds, one critical
// `cert.rotation_failing` event per failure episode (reported on every heartbeat under one
// id while it lasts), sd_notify READY/WATCHDOG/STATUS, clean exit on SIGTERM. With
// modules.auto_apply (the default) each new desired module set of a heartbeat reply is applied
// on a worker thread (module_reconciler.hpp), never holding up heartbeats, leases or a stop. Every reading
// of time and every wait goes through the injected Clock, so tests step it on a ManualClock.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "agent/config.hpp"
#include "agent/runtime/module_reconciler.hpp"  // modules (h-apply)
#include "agent/runtime/stop_signal.hpp"
#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct ServiceOptions {
  std::chrono::milliseconds min_backoff{1000};
  std::chrono::milliseconds max_backoff{std::chrono::minutes(5)};
  double rotate_at_fraction = 0.75;  // of the certificate lifetime
  double rotate_jitter = 0.05;       // +- this fraction, so a fleet does not rotate at once
  int rotation_alert_after = 2;      // consecutive rotation failures before the critical event
  // modules (h-apply): with modules.auto_apply, what applies a new desired set on the
  // reconciler's worker (agent/runtime/module_reconciler.hpp); empty: the real update
  // (registry over libcurl, the Linux mounter). Unit tests put a fake mounter behind it.
  ModuleApplyFn module_apply{};
};

// Next delay after `failures` consecutive failures: min(max, min * 2^(failures-1)), scaled by
// a factor in [0.5, 1) ("equal jitter") so a fleet coming back does not arrive in step.
std::chrono::milliseconds backoff_delay(const ServiceOptions& options, int failures, double random01);

// When to rotate a certificate valid over [not_before, not_after).
Clock::WallTime rotation_time(const ServiceOptions& options, Clock::WallTime not_before,
                              Clock::WallTime not_after, double random01);

// How the loop reaches the control service: libcurl in production, a fake in unit tests.
// Called again after each rotation, with the new client certificate.
using HttpClientFactory = std::function<std::unique_ptr<HttpClient>(TlsOptions)>;

// Runs until a stop signal; the Error is why it could not start (not enrolled, no config).
// random01 draws the jitter of backoff and rotation, uniform in [0, 1].
Status run_service(const AgentConfig& config, const ServiceOptions& options, const Clock& clock,
                   const std::function<double()>& random01, StopSignal& stop,
                   const HttpClientFactory& make_http = HttpClientFactory(make_lean_http_client));

}  // namespace cairn::agent
