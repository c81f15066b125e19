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
#include <iostream>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/json.hpp"
#include "control/store/open_store.hpp"
#include "tools/bench/tasks_tally.hpp"

using namespace cairn;
using namespace cairn::control;

namespace {

struct Options : bench::LoadOptions {
  std::vector<std::string> databases;
};

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
int usage(const std::string& why) {
  std::cerr << "tasks_load: " << why << "\n"
            << "usage: tasks_load --database URL|PATH [--database URL] " << bench::kLoadUsage << "\n";
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const std::string wrong = bench::parse_options(argc, argv, o, [&](const std::string& name, const std::string& value) {
    if (name != "--database") return false;
    o.databases.push_back(value);
    return true;
  });
  if (!wrong.empty()) return usage(wrong);
  if (o.databases.empty() || o.databases.size() > 2) return usage("give one or two --database");
  if (!bench::counts_positive(o)) return usage("counts must be positive");

  std::vector<std::unique_ptr<Store>> stores;
  for (const auto& db : o.databases) {
    auto store = bench::open_bench_store(db, o.workers + o.submitters + 2);
    if (!store) {
      std::cerr << "tasks_load: " << store.error().message << "\n";
      return 69;
    }
    stores.push_back(std::move(*store));
  }

  bench::Tally tally(o);
  std::atomic<int> next{0};
  tally.start();

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
          tally.submitted(static_cast<std::size_t>(i));
          batch.push_back(std::move(t));
        }
        if (batch.size() == 1) {
          if (auto r = store.submit_task(batch[0]); !r) {
            if (tally.errors++ == 0) std::cerr << "tasks_load: submit: " << r.error().message << "\n";
          }
        } else if (auto r = store.submit_tasks(batch); !r) {
          tally.errors += static_cast<std::int64_t>(batch.size());
          std::cerr << "tasks_load: submit batch: " << r.error().message << "\n";
        }
      }
    });
  }
  for (int w = 0; w < o.workers; ++w) {
    threads.emplace_back([&, w] {
      Store& store = *stores[static_cast<std::size_t>(w) % stores.size()];
      std::vector<std::string> nodes;
      for (int k = w; k < o.nodes; k += o.workers) nodes.push_back("node-" + std::to_string(k));
      if (nodes.empty()) return;
      std::size_t turn = 0;
      while (tally.running()) {
        LeaseQuery q;
        q.node_id = nodes[turn++ % nodes.size()];
        q.budget = {1'000'000, 1LL << 50, 1LL << 50};
        q.max_tasks = o.batch;
        q.lease_ms = 300'000;
        q.now_ms = wall_ms();
        auto leased = store.lease_tasks(q);
        ++tally.leases;
        if (!leased) {
          if (tally.errors++ == 0) std::cerr << "tasks_load: lease: " << leased.error().message << "\n";
          continue;
        }
        if (leased->empty()) {
          // Nothing for this node now: a real node waits for its next heartbeat's hint; the
          // driver pauses briefly so idle nodes do not crowd out the database.
          ++tally.empty_leases;
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
              if (tally.errors++ == 0) std::cerr << "tasks_load: complete: " << r.error().message << "\n";
              continue;
            }
            outcomes.push_back(*r);
          } else {
            auto r = store.complete_tasks(part);
            if (!r) {
              tally.errors += static_cast<std::int64_t>(part.size());
              std::cerr << "tasks_load: complete batch: " << r.error().message << "\n";
              continue;
            }
            outcomes = std::move(*r);
          }
          for (std::size_t k = 0; k < part.size(); ++k) {
            if (outcomes[k].check != FenceCheck::ok) {
              if (tally.errors++ == 0) std::cerr << "tasks_load: complete: fence refused\n";
              continue;
            }
            const auto idx = static_cast<std::size_t>(std::stoll(part[k].task_id.substr(5)));
            tally.completed(w, idx);
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = tally.elapsed_s();

  auto check = bench::check_store(*stores[0], o.tasks);
  if (!check) std::cerr << "tasks_load: store check: " << check.error().message << "\n";
  const bench::StoreCheck store = check ? *check : bench::StoreCheck{};
  // The driver's own CPU (all threads): what the simulated nodes and the store's client side
  // (libpq, JSON) cost, next to the server's CPU the script measures.
  Json out = tally.report(seconds, bench::self_cpu_s(), store);
  out["stores"] = static_cast<std::int64_t>(stores.size());
  out["backend"] = is_postgres_url(o.databases[0]) ? "postgresql" : "sqlite";
  std::cout << dump_json(out) << "\n";
  return tally.exactly_once() && store.exactly_once(o.tasks) ? 0 : 2;
}
