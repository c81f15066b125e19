// `cairn-agent service`: the long-lived heartbeat loop (systemd runs it after switch_root).
#include <random>

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/runtime/service.hpp"
#include "common/log.hpp"

namespace cairn::agent::cli {

void add_service(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("service", "run the heartbeat loop until SIGTERM");
  auto options = std::make_shared<ServiceOptions>();
  auto min_backoff_ms = std::make_shared<std::int64_t>(options->min_backoff.count());
  auto max_backoff_ms = std::make_shared<std::int64_t>(options->max_backoff.count());
  cmd->add_option("--min-backoff-ms", *min_backoff_ms, "first retry delay while control is away");
  cmd->add_option("--max-backoff-ms", *max_backoff_ms, "longest retry delay");
  cmd->add_option("--rotate-at", options->rotate_at_fraction, "rotate at this fraction of the cert lifetime")
      ->check(CLI::Range(0.1, 0.95));
  cmd->callback([&global, &exit_code, options, min_backoff_ms, max_backoff_ms] {
    options->min_backoff = std::chrono::milliseconds(std::max<std::int64_t>(1, *min_backoff_ms));
    options->max_backoff = std::chrono::milliseconds(std::max(*min_backoff_ms, *max_backoff_ms));
    // A daemon logs its errors as events; the command contract applies to start-up failures.
    exit_code = run_command("service", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      out.stage = "service";
      std::mt19937_64 rng{std::random_device{}()};
      std::uniform_real_distribution<double> uniform(0.0, 1.0);
      const std::function<double()> random01 = [&] { return uniform(rng); };
      StopSignal stop;
      auto ran = run_service(*config, *options, SystemClock::instance(), random01, stop);
      if (!ran) {
        log::error("service.failed", {{"error", ran.error().message}});
        return out.error = ran.error(), out;
      }
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
