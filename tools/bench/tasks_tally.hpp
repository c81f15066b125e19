// What the two task-queue bench drivers share (tasks_load through the Store interface,
// tasks_http over HTTPS): the options of the load, the tally of the timed phase (submit times,
// completions, latencies, counters), the exactly-once checks and the keys of the JSON object
// both print, which tools/bench/tasks reads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"
#include "control/store/store.hpp"

namespace cairn::bench {

// The load both drivers run: simulated nodes, tasks, the threads that play them, batch sizes.
struct LoadOptions {
  int nodes = 1000;
  int tasks = 20000;
  int workers = 16;
  int submitters = 8;
  int batch = 10;           // tasks per lease
  int submit_batch = 100;   // tasks per submit request
  int complete_batch = 10;  // completions per complete request
};

// Those options as a usage line shows them.
inline constexpr const char* kLoadUsage =
    "[--nodes N] [--tasks N] [--workers N] [--submitters N] [--batch N] [--submit-batch N] [--complete-batch N]";

// Reads argv as `--name value` pairs: LoadOptions' own into `load`, the driver's through
// take(name, value), which returns false for a name it does not know. Empty when every pair
// was read, else what is wrong, for the usage message.
std::string parse_options(int argc, char** argv, LoadOptions& load,
                          const std::function<bool(const std::string& name, const std::string& value)>& take);
// Every count at least 1.
bool counts_positive(const LoadOptions& load);

// This process's CPU seconds so far (user + system, all threads).
double self_cpu_s();

// The store-side exactly-once check: every task succeeded after exactly one lease.
struct StoreCheck {
  std::int64_t succeeded = -1;              // -1: not checked
  std::int64_t leased_more_than_once = -1;
  [[nodiscard]] bool exactly_once(int tasks) const { return leased_more_than_once == 0 && succeeded == tasks; }
};
// The store a driver uses or the servers share: PostgreSQL (a pool of `pool` connections) for
// a postgresql:// URL, else the SQLite file at that path.
Result<std::unique_ptr<control::Store>> open_bench_store(const std::string& database, int pool);
Result<StoreCheck> check_store(control::Store& store, int tasks);

// The timed phase's figures, written by the driver's threads: task i is submitted by one
// submitter and completed (once, if all goes well) by some worker; each worker keeps its own
// latencies.
class Tally {
 public:
  explicit Tally(const LoadOptions& load);

  // The clock starts; the phase lasts 5 minutes at most.
  void start();
  // Tasks are left to complete (neither done nor counted as errors) and time is left.
  [[nodiscard]] bool running() const;
  void submitted(std::size_t task);
  // `worker` saw task `task` complete: counts it and its latency from submit.
  void completed(int worker, std::size_t task);
  [[nodiscard]] double elapsed_s() const;

  // Every task completed exactly once by the clients' count.
  [[nodiscard]] bool exactly_once() const;
  // The keys both drivers print; the caller adds its own. `seconds`: elapsed_s() once the
  // threads were joined.
  [[nodiscard]] Json report(double seconds, double driver_cpu_s, const StoreCheck& store) const;

  std::atomic<std::int64_t> done{0};
  std::atomic<std::int64_t> errors{0};
  std::atomic<std::int64_t> leases{0};
  std::atomic<std::int64_t> empty_leases{0};

 private:
  std::int64_t duplicates() const;
  std::int64_t lost() const;

  LoadOptions load_;
  std::vector<std::atomic<std::int64_t>> submitted_us_;
  std::vector<std::atomic<int>> completions_;
  std::vector<std::vector<std::int64_t>> latencies_;  // one per worker, written by its thread only
  std::chrono::steady_clock::time_point deadline_{};
  std::int64_t start_us_ = 0;
};

}  // namespace cairn::bench
