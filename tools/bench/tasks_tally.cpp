#include "tools/bench/tasks_tally.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "control/store/open_store.hpp"
#include "control/store/postgres.hpp"

namespace cairn::bench {

namespace {

std::int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The p-th percentile of microsecond samples, in milliseconds (0 without samples).
double percentile(std::vector<std::int64_t>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]) / 1000.0;
}

// `name value` into `load` when name is one of LoadOptions' options; false otherwise.
bool take_load_option(const std::string& name, const std::string& value, LoadOptions& load) {
  int* field = name == "--nodes"            ? &load.nodes
               : name == "--tasks"          ? &load.tasks
               : name == "--workers"        ? &load.workers
               : name == "--submitters"     ? &load.submitters
               : name == "--batch"          ? &load.batch
               : name == "--submit-batch"   ? &load.submit_batch
               : name == "--complete-batch" ? &load.complete_batch
                                            : nullptr;
  if (field == nullptr) return false;
  *field = std::atoi(value.c_str());
  return true;
}

}  // namespace

std::string parse_options(int argc, char** argv, LoadOptions& load,
                          const std::function<bool(const std::string& name, const std::string& value)>& take) {
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (i + 1 >= argc) return "'" + name + "' needs a value";
    const std::string value = argv[++i];
    if (!take_load_option(name, value, load) && !take(name, value)) return "unknown argument '" + name + "'";
  }
  return "";
}

bool counts_positive(const LoadOptions& load) {
  return load.nodes >= 1 && load.tasks >= 1 && load.workers >= 1 && load.submitters >= 1 && load.batch >= 1 &&
         load.submit_batch >= 1 && load.complete_batch >= 1;
}

double self_cpu_s() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

Result<std::unique_ptr<control::Store>> open_bench_store(const std::string& database, int pool) {
  return control::is_postgres_url(database) ? control::open_postgres_store(database, {pool})
                                            : control::open_store({std::filesystem::path(database).parent_path()}, database);
}

Result<StoreCheck> check_store(control::Store& store, int tasks) {
  auto listed = store.list_tasks({protocol::TaskState::succeeded, std::nullopt, tasks + 1});
  if (!listed) return fail(listed.error());
  StoreCheck check{0, 0};
  for (const auto& t : *listed) {
    ++check.succeeded;
    if (t.attempts != 1) ++check.leased_more_than_once;
  }
  return check;
}

Tally::Tally(const LoadOptions& load)
    : load_(load),
      submitted_us_(static_cast<std::size_t>(load.tasks)),
      completions_(static_cast<std::size_t>(load.tasks)),
      latencies_(static_cast<std::size_t>(load.workers)) {}

void Tally::start() {
  deadline_ = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  start_us_ = steady_us();
}

bool Tally::running() const {
  return done.load() + errors.load() < load_.tasks && std::chrono::steady_clock::now() < deadline_;
}

void Tally::submitted(std::size_t task) { submitted_us_[task] = steady_us(); }

void Tally::completed(int worker, std::size_t task) {
  ++completions_[task];
  latencies_[static_cast<std::size_t>(worker)].push_back(steady_us() - submitted_us_[task].load());
  ++done;
}

double Tally::elapsed_s() const { return static_cast<double>(steady_us() - start_us_) / 1e6; }

std::int64_t Tally::duplicates() const {
  std::int64_t n = 0;
  for (const auto& c : completions_) n += std::max(0, c.load() - 1);
  return n;
}

std::int64_t Tally::lost() const {
  return std::count_if(completions_.begin(), completions_.end(), [](const auto& c) { return c.load() == 0; });
}

bool Tally::exactly_once() const { return duplicates() == 0 && lost() == 0; }

Json Tally::report(double seconds, double driver_cpu_s, const StoreCheck& store) const {
  std::vector<std::int64_t> all;
  for (const auto& l : latencies_) all.insert(all.end(), l.begin(), l.end());
  return {{"nodes", load_.nodes},
          {"tasks", load_.tasks},
          {"workers", load_.workers},
          {"submitters", load_.submitters},
          {"batch", load_.batch},
          {"submit_batch", load_.submit_batch},
          {"complete_batch", load_.complete_batch},
          {"seconds", seconds},
          {"driver_cpu_s", driver_cpu_s},
          {"completed", done.load()},
          {"completed_per_s", static_cast<double>(done.load()) / seconds},
          {"latency_p50_ms", percentile(all, 0.50)},
          {"latency_p99_ms", percentile(all, 0.99)},
          {"leases", leases.load()},
          {"empty_leases", empty_leases.load()},
          {"errors", errors.load()},
          {"duplicates", duplicates()},
          {"lost", lost()},
          {"store_succeeded", store.succeeded},
          {"store_leased_more_than_once", store.leased_more_than_once}};
}

}  // namespace cairn::bench
