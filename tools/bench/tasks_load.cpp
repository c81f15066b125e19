// The task-queue benchmark driver (issue 13, tools/bench/tasks): submit -> lease -> complete
// through the Store interface, as the control service calls it, with N simulated nodes.
// Submitters insert tasks in batches of --submit-batch (as `task submit --batch FILE` does, one
// transaction per request; 1: one by one, as `task submit`); workers play the nodes in turn,
// each lease taking up to --batch tasks, then complete them together with their fencing
// tokens in one complete_tasks call (as an agent's runner reports tasks that finished
// together, POST /v1/tasks/complete; --complete-batch 1: one complete_task each). With two
// --database arguments the load is split over two stores on the same database (two replicas'
// stores: separate connection pools). Prints one JSON object: throughput, latency from submit
// to completion, the driver's own CPU time, and the exactly-once check (from the clients and
// from the store).
//   tasks_load --database URL|PATH [--database URL] [--nodes 1000] [--tasks 20000]
//              [--workers 16] [--submitters 8] [--batch 10] [--submit-batch 100] [--complete-batch 10]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include "common/json.hpp"
#include "control/store/open_store.hpp"
#include "control/store/postgres.hpp"

using namespace cairn;
using namespace cairn::control;
using Steady = std::chrono::steady_clock;

namespace {

struct Options {
  std::vector<std::string> databases;
  int nodes = 1000;
  int tasks = 20000;
  int workers = 16;
  int submitters = 8;
  int batch = 10;
  int submit_batch = 100;
  int complete_batch = 10;
};

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
std::int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Steady::now().time_since_epoch()).count();
}

int usage(const std::string& why) {
  std::cerr << "tasks_load: " << why << "\n"
            << "usage: tasks_load --database URL|PATH [--database URL] [--nodes N] [--tasks N] [--workers N] "
               "[--submitters N] [--batch N] [--submit-batch N] [--complete-batch N]\n";
  return 64;
}

double percentile(std::vector<std::int64_t>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]) / 1000.0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return usage("'" + a + "' needs a value");
    const std::string v = argv[++i];
    if (a == "--database") o.databases.push_back(v);
    else if (a == "--nodes") o.nodes = std::atoi(v.c_str());
    else if (a == "--tasks") o.tasks = std::atoi(v.c_str());
    else if (a == "--workers") o.workers = std::atoi(v.c_str());
    else if (a == "--submitters") o.submitters = std::atoi(v.c_str());
    else if (a == "--batch") o.batch = std::atoi(v.c_str());
    else if (a == "--submit-batch") o.submit_batch = std::atoi(v.c_str());
    else if (a == "--complete-batch") o.complete_batch = std::atoi(v.c_str());
    else return usage("unknown argument '" + a + "'");
  }
  if (o.databases.empty() || o.databases.size() > 2) return usage("give one or two --database");
  if (o.nodes < 1 || o.tasks < 1 || o.workers < 1 || o.submitters < 1 || o.batch < 1 || o.submit_batch < 1 ||
      o.complete_batch < 1) {
    return usage("counts must be positive");
  }

  std::vector<std::unique_ptr<Store>> stores;
  for (const auto& db : o.databases) {
    Result<std::unique_ptr<Store>> store = is_postgres_url(db)
                                               ? open_postgres_store(db, {o.workers + o.submitters + 2})
                                               : open_store({std::filesystem::path(db).parent_path()}, db);
    if (!store) {
      std::cerr << "tasks_load: " << store.error().message << "\n";
      return 69;
    }
    stores.push_back(std::move(*store));
  }

  const auto n = static_cast<std::size_t>(o.tasks);
  std::vector<std::atomic<std::int64_t>> submitted_us(n);
  std::vector<std::atomic<int>> completions(n);
  std::vector<std::vector<std::int64_t>> latencies(static_cast<std::size_t>(o.workers));
  std::atomic<int> next{0};
  std::atomic<std::int64_t> done{0};
  std::atomic<std::int64_t> errors{0};
  std::atomic<std::int64_t> leases{0};
  std::atomic<std::int64_t> empty_leases{0};
  const auto deadline = Steady::now() + std::chrono::minutes(5);
  const std::int64_t start_us = steady_us();

  std::vector<std::thread> threads;
  for (int s = 0; s < o.submitters; ++s) {
    threads.emplace_back([&, s] {
      Store& store = *stores[static_cast<std::size_t>(s) % stores.size()];
      for (int first = next.fetch_add(o.submit_batch); first < o.tasks; first = next.fetch_add(o.submit_batch)) {
        const int last = std::min(o.tasks, first + o.submit_batch);
        std::vector<TaskRecord> batch;
        for (int i = first; i < last; ++i) {
          TaskRecord t;
          t.id = "task-" + std::to_string(i);
          t.kind = "exec";
          t.args_json = R"({"argv":["true"]})";
          t.created_at_ms = wall_ms();
          submitted_us[static_cast<std::size_t>(i)] = steady_us();
          batch.push_back(std::move(t));
        }
        if (batch.size() == 1) {
          if (auto r = store.submit_task(batch[0]); !r) {
            if (errors++ == 0) std::cerr << "tasks_load: submit: " << r.error().message << "\n";
          }
        } else if (auto r = store.submit_tasks(batch); !r) {
          errors += static_cast<std::int64_t>(batch.size());
          std::cerr << "tasks_load: submit batch: " << r.error().message << "\n";
        }
      }
    });
  }
  for (int w = 0; w < o.workers; ++w) {
    threads.emplace_back([&, w] {
      Store& store = *stores[static_cast<std::size_t>(w) % stores.size()];
      auto& lat = latencies[static_cast<std::size_t>(w)];
      std::vector<std::string> nodes;
      for (int k = w; k < o.nodes; k += o.workers) nodes.push_back("node-" + std::to_string(k));
      if (nodes.empty()) return;
      std::size_t turn = 0;
      while (done.load() + errors.load() < o.tasks && Steady::now() < deadline) {
        LeaseQuery q;
        q.node_id = nodes[turn++ % nodes.size()];
        q.budget = {1'000'000, 1LL << 50, 1LL << 50};
        q.max_tasks = o.batch;
        q.lease_ms = 300'000;
        q.now_ms = wall_ms();
        auto leased = store.lease_tasks(q);
        ++leases;
        if (!leased) {
          if (errors++ == 0) std::cerr << "tasks_load: lease: " << leased.error().message << "\n";
          continue;
        }
        if (leased->empty()) {
          // Nothing for this node now: a real node waits for its next heartbeat's hint; the
          // driver pauses briefly so idle nodes do not crowd out the database.
          ++empty_leases;
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
          continue;
        }
        std::vector<TaskCompletion> batch;
        for (const auto& t : *leased) {
          TaskCompletion c;
          c.task_id = t.id;
          c.node_id = q.node_id;
          c.fence = t.fence;
          c.now_ms = wall_ms();
          c.outcome = "succeeded";
          c.exit_code = 0;
          batch.push_back(std::move(c));
        }
        for (std::size_t from = 0; from < batch.size(); from += static_cast<std::size_t>(o.complete_batch)) {
          const std::size_t to = std::min(batch.size(), from + static_cast<std::size_t>(o.complete_batch));
          std::span<const TaskCompletion> part(batch.data() + from, to - from);
          std::vector<CompleteOutcome> outcomes;
          if (part.size() == 1) {
            auto r = store.complete_task(part[0]);
            if (!r) {
              if (errors++ == 0) std::cerr << "tasks_load: complete: " << r.error().message << "\n";
              continue;
            }
            outcomes.push_back(*r);
          } else {
            auto r = store.complete_tasks(part);
            if (!r) {
              errors += static_cast<std::int64_t>(part.size());
              std::cerr << "tasks_load: complete batch: " << r.error().message << "\n";
              continue;
            }
            outcomes = std::move(*r);
          }
          for (std::size_t k = 0; k < part.size(); ++k) {
            if (outcomes[k].check != FenceCheck::ok) {
              if (errors++ == 0) std::cerr << "tasks_load: complete: fence refused\n";
              continue;
            }
            const auto idx = static_cast<std::size_t>(std::stoll(part[k].task_id.substr(5)));
            ++completions[idx];
            lat.push_back(steady_us() - submitted_us[idx].load());
            ++done;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = static_cast<double>(steady_us() - start_us) / 1e6;

  // exactly once, from the clients...
  std::int64_t duplicates = 0, lost = 0;
  for (auto& c : completions) {
    if (c.load() == 0) ++lost;
    if (c.load() > 1) duplicates += c.load() - 1;
  }
  // ...and from the store: every task succeeded after exactly one lease
  std::int64_t stored_ok = 0, stored_multi = 0;
  auto listed = stores[0]->list_tasks({protocol::TaskState::succeeded, std::nullopt, o.tasks + 1});
  if (listed) {
    for (const auto& t : *listed) {
      ++stored_ok;
      if (t.attempts != 1) ++stored_multi;
    }
  }
  // The driver's own CPU (user + system, all threads): what the simulated nodes and the
  // store's client side (libpq, JSON) cost, next to the server's CPU the script measures.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double cpu_s = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  std::vector<std::int64_t> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  Json out = {{"stores", static_cast<std::int64_t>(stores.size())},
              {"backend", is_postgres_url(o.databases[0]) ? "postgresql" : "sqlite"},
              {"nodes", o.nodes},
              {"tasks", o.tasks},
              {"workers", o.workers},
              {"submitters", o.submitters},
              {"batch", o.batch},
              {"submit_batch", o.submit_batch},
              {"complete_batch", o.complete_batch},
              {"seconds", seconds},
              {"driver_cpu_s", cpu_s},
              {"completed", done.load()},
              {"completed_per_s", static_cast<double>(done.load()) / seconds},
              {"latency_p50_ms", percentile(all, 0.50)},
              {"latency_p99_ms", percentile(all, 0.99)},
              {"leases", leases.load()},
              {"empty_leases", empty_leases.load()},
              {"errors", errors.load()},
              {"duplicates", duplicates},
              {"lost", lost},
              {"store_succeeded", stored_ok},
              {"store_leased_more_than_once", stored_multi}};
  std::cout << dump_json(out) << "\n";
  return duplicates == 0 && lost == 0 && stored_multi == 0 && stored_ok == o.tasks ? 0 : 2;
}
