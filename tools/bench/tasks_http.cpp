// The task-queue benchmark driver over the real protocol (issue 13, tools/bench/tasks --http):
// the same load as tasks_load (submit -> lease -> complete, N simulated nodes), but every call
// goes over HTTPS to running `cairn-control serve` replicas, as agents and operators send it:
//   - setup (before the clock): each node gets an Ed25519 key and a CSR, enrolls through
//     POST /v1/enroll with the bootstrap token (--enroll-concurrency at once), then sends one
//     heartbeat (placement reads its resources) over its own mTLS connection, kept alive;
//   - submitters post batches of --submit-batch tasks to POST /v1/admin/tasks/batch with the
//     admin certificate (what `cairn-control task submit --batch` sends);
//   - workers play the nodes in turn, each node on its own keep-alive connection with its own
//     certificate: POST /v1/tasks/lease for up to --batch tasks, then POST /v1/tasks/complete
//     with their fencing tokens in groups of --complete-batch (1: POST /v1/tasks/{id}/complete).
// Node i and submitter i talk to replica i mod R (--server once per replica): the load is
// split over the replicas. The HTTPS client is the agent's own (common/http.hpp, libcurl).
// Prints one JSON object with the keys of tasks_load, plus the servers' CPU time during the
// timed phase (--server-pid; --pg-postmaster: PostgreSQL's too) and the setup figures. --database (the store the servers use)
// adds the store-side exactly-once check after the run.
//   tasks_http --server URL [--server URL] --ca FILE --token TOKEN --admin-cert FILE --admin-key FILE
//              --work DIR [--server-pid PID]... [--pg-postmaster PID] [--database URL|PATH] [--nodes 1000] [--tasks 20000]
//              [--workers 16] [--submitters 8] [--batch 10] [--submit-batch 100] [--complete-batch 10]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "common/http.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/protocol/tasks.hpp"
#include "common/uuid.hpp"
#include "tools/bench/tasks_tally.hpp"

using namespace cairn;
using Steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

struct Options : bench::LoadOptions {
  std::vector<std::string> servers;
  std::vector<int> server_pids;
  int pg_postmaster = 0;
  std::string ca, token, admin_cert, admin_key, work, database;
  int enroll_concurrency = 16;
};

int usage(const std::string& why) {
  std::cerr << "tasks_http: " << why << "\n"
            << "usage: tasks_http --server URL [--server URL] --ca FILE --token TOKEN --admin-cert FILE "
               "--admin-key FILE --work DIR [--server-pid PID]... [--pg-postmaster PID] [--database URL|PATH] "
            << bench::kLoadUsage << " [--enroll-concurrency N]\n";
  return 64;
}

// CPU seconds (user + system, all threads) of a process so far; 0 when it is gone.
double process_cpu_s(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; fields >> field; ++i) {  // field 3 is the state; 14 utime, 15 stime
    if (i == 14 || i == 15) ticks += std::strtod(field.c_str(), nullptr);
    if (i == 15) break;
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds of a PostgreSQL server so far: the postmaster (with the children it reaped:
// backends of closed connections) and its live children (the backends of open connections),
// as tools/bench/tasks measures it.
double postgres_cpu_s(int postmaster) {
  auto fields = [](int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<double> out;
    const auto close = text.rfind(')');
    if (close == std::string::npos) return out;
    std::istringstream words(text.substr(close + 2));
    std::string w;
    while (words >> w) out.push_back(std::strtod(w.c_str(), nullptr));
    return out;  // out[0] is field 3 (state): utime is out[11], stime 12, cutime 13, cstime 14
  };
  auto pm = fields(postmaster);
  if (pm.size() < 15) return 0;
  double ticks = pm[11] + pm[12] + pm[13] + pm[14];
  std::ifstream children("/proc/" + std::to_string(postmaster) + "/task/" + std::to_string(postmaster) + "/children");
  for (int child = 0; children >> child;) {
    auto c = fields(child);
    if (c.size() >= 13) ticks += c[11] + c[12];
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Node {
  std::string id;
  std::string server;
  fs::path key_file, cert_file;
  std::unique_ptr<HttpClient> client;  // its own keep-alive mTLS connection
};

// One JSON request; the answer's body when the status is `expect`, else an error naming both.
Result<std::string> call(HttpClient& client, const std::string& method, const std::string& url, std::string body,
                         const HttpHeaders& extra = {}, long expect = 200) {
  HttpRequest r;
  r.method = method;
  r.url = url;
  r.protocols = "https";
  r.headers = extra;
  r.headers.emplace_back("Content-Type", "application/json");
  r.headers.emplace_back("Accept", "application/json");
  r.body = std::move(body);
  r.total_timeout = std::chrono::seconds(60);
  r.max_response_bytes = 8 << 20;
  auto answer = client.send(r);
  if (!answer) return fail(answer.error().with_context(method + " " + url));
  if (answer->status != expect && !(expect == 200 && answer->status == 201)) {
    return fail(Errc::io, method + " " + url + ": HTTP " + std::to_string(answer->status) + " " +
                              answer->body.substr(0, 300));
  }
  return std::move(answer->body);
}

// Heartbeat of an idle 8-CPU node with room for everything the bench submits.
std::string heartbeat_body() {
  protocol::HeartbeatRequest hb;
  hb.boot_id = random_uuid().str();
  hb.agent_version = "0.1.0";
  hb.mount_state = "none";
  hb.cpu_count = 8;
  hb.mem_total_bytes = 16ULL << 30;
  hb.mem_available_bytes = 15ULL << 30;
  hb.disk_total_bytes = 256ULL << 30;
  hb.disk_free_bytes = 250ULL << 30;
  hb.uptime_s = 86'400;
  return dump_json(protocol::to_json(hb));
}

// Runs fn(i) for i in [0, count) on `threads` threads; returns the first error.
template <class Fn>
Status parallel(int count, int threads, Fn&& fn) {
  std::atomic<int> next{0};
  std::mutex mutex;
  Status first{};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = next++; i < count; i = next++) {
        if (auto ok = fn(i, t); !ok) {
          std::lock_guard lock(mutex);
          if (first) first = ok;
          return;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return first;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const std::string wrong = bench::parse_options(argc, argv, o, [&](const std::string& a, const std::string& v) {
    if (a == "--server") o.servers.push_back(v);
    else if (a == "--server-pid") o.server_pids.push_back(std::atoi(v.c_str()));
    else if (a == "--pg-postmaster") o.pg_postmaster = std::atoi(v.c_str());
    else if (a == "--ca") o.ca = v;
    else if (a == "--token") o.token = v;
    else if (a == "--admin-cert") o.admin_cert = v;
    else if (a == "--admin-key") o.admin_key = v;
    else if (a == "--work") o.work = v;
    else if (a == "--database") o.database = v;
    else if (a == "--enroll-concurrency") o.enroll_concurrency = std::atoi(v.c_str());
    else return false;
    return true;
  });
  if (!wrong.empty()) return usage(wrong);
  if (o.servers.empty()) return usage("give --server once per replica");
  if (o.ca.empty() || o.token.empty() || o.admin_cert.empty() || o.admin_key.empty() || o.work.empty()) {
    return usage("--ca, --token, --admin-cert, --admin-key and --work are required");
  }
  if (!bench::counts_positive(o) || o.enroll_concurrency < 1) return usage("counts must be positive");
  if (o.batch > static_cast<int>(protocol::kMaxLeaseBatch) || o.complete_batch > static_cast<int>(protocol::kMaxCompleteBatch)) {
    return usage("--batch and --complete-batch are at most 64 (the protocol's caps)");
  }
  const fs::path dir = fs::path(o.work) / "nodes";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return usage("--work " + o.work + ": " + ec.message());

  // ---- setup: keys, enrollment, one heartbeat per node (not timed) ----
  const auto setup_start = Steady::now();
  std::vector<Node> nodes(static_cast<std::size_t>(o.nodes));
  const std::string bearer = "Bearer " + o.token;
  std::vector<std::unique_ptr<HttpClient>> enrollers;
  for (int t = 0; t < o.enroll_concurrency; ++t) enrollers.push_back(make_http_client({o.ca, "", "", ""}));
  auto enrolled = parallel(o.nodes, o.enroll_concurrency, [&](int i, int t) -> Status {
    Node& n = nodes[static_cast<std::size_t>(i)];
    n.id = random_uuid().str();
    n.server = o.servers[static_cast<std::size_t>(i) % o.servers.size()];
    auto key = generate_key(KeyType::ed25519);
    if (!key) return fail(key.error());
    auto key_pem = private_key_pem(key->get());
    auto csr = make_csr_pem(key->get(), n.id);
    if (!key_pem || !csr) return fail(Errc::internal, "node key or CSR");
    protocol::EnrollRequest req;
    req.identity = {n.id, "local", "bench", "", "", "", "", "bench-" + n.id.substr(0, 8)};
    req.csr_pem = std::move(*csr);
    auto body = call(*enrollers[static_cast<std::size_t>(t)], "POST", n.server + "/v1/enroll",
                     dump_json(protocol::to_json(req)), {{"Authorization", bearer}});
    if (!body) return fail(body.error());
    auto answer = protocol::decode_certificate_response(*body);
    if (!answer) return fail(answer.error());
    n.key_file = dir / (std::to_string(i) + ".key");
    n.cert_file = dir / (std::to_string(i) + ".crt");
    if (auto ok = write_file_atomic(n.key_file, *key_pem, 0600); !ok) return ok;
    if (auto ok = write_file_atomic(n.cert_file, answer->certificate_pem, 0644); !ok) return ok;
    return {};
  });
  if (!enrolled) {
    std::cerr << "tasks_http: enrollment: " << enrolled.error().message << "\n";
    return 69;
  }
  enrollers.clear();
  const double enroll_s = std::chrono::duration<double>(Steady::now() - setup_start).count();
  const std::string hb = heartbeat_body();
  auto connected = parallel(o.nodes, o.enroll_concurrency, [&](int i, int) -> Status {
    Node& n = nodes[static_cast<std::size_t>(i)];
    n.client = make_http_client({o.ca, "", n.cert_file.string(), n.key_file.string()});
    auto body = call(*n.client, "POST", n.server + "/v1/heartbeat", hb);
    if (!body) return fail(body.error());
    return {};
  });
  if (!connected) {
    std::cerr << "tasks_http: first heartbeat: " << connected.error().message << "\n";
    return 69;
  }
  const double setup_s = std::chrono::duration<double>(Steady::now() - setup_start).count();

  // ---- the timed phase ----
  const auto n = static_cast<std::size_t>(o.tasks);
  bench::Tally tally(o);
  std::atomic<int> next{0};
  std::atomic<std::int64_t> requests{0};
  std::mutex err_mutex;
  std::string first_error;
  auto error = [&](const std::string& what, std::int64_t count) {
    tally.errors += count;
    std::lock_guard lock(err_mutex);
    if (first_error.empty()) first_error = what;
  };
  std::vector<double> server_cpu0;
  for (int pid : o.server_pids) server_cpu0.push_back(process_cpu_s(pid));
  const double self_cpu0 = bench::self_cpu_s();
  const double pg_cpu0 = o.pg_postmaster != 0 ? postgres_cpu_s(o.pg_postmaster) : 0;
  tally.start();

  std::vector<std::thread> threads;
  for (int s = 0; s < o.submitters; ++s) {
    threads.emplace_back([&, s] {
      auto client = make_http_client({o.ca, "", o.admin_cert, o.admin_key});
      const std::string url = o.servers[static_cast<std::size_t>(s) % o.servers.size()] + "/v1/admin/tasks/batch";
      for (int first = next.fetch_add(o.submit_batch); first < o.tasks; first = next.fetch_add(o.submit_batch)) {
        const int last = std::min(o.tasks, first + o.submit_batch);
        Json items = Json::array();
        for (int i = first; i < last; ++i) {
          // The index rides in argv, so a worker finds it in what it leased.
          items.push_back({{"kind", "exec"}, {"args", {{"argv", {"true", std::to_string(i)}}}}});
          tally.submitted(static_cast<std::size_t>(i));
        }
        ++requests;
        auto answer = call(*client, "POST", url, dump_json(Json{{"tasks", std::move(items)}}));
        if (!answer) error("submit batch: " + answer.error().message, last - first);
      }
    });
  }
  for (int w = 0; w < o.workers; ++w) {
    threads.emplace_back([&, w] {
      std::vector<Node*> mine;
      for (int k = w; k < o.nodes; k += o.workers) mine.push_back(&nodes[static_cast<std::size_t>(k)]);
      if (mine.empty()) return;
      protocol::LeaseRequest lease_request;
      lease_request.max_tasks = o.batch;
      lease_request.lease_s = 300;
      const std::string lease_body = dump_json(protocol::to_json(lease_request));
      std::size_t turn = 0;
      while (tally.running()) {
        Node& node = *mine[turn++ % mine.size()];
        ++requests;
        auto body = call(*node.client, "POST", node.server + "/v1/tasks/lease", lease_body);
        ++tally.leases;
        if (!body) {
          error("lease: " + body.error().message, 1);
          continue;
        }
        auto leased = protocol::decode_lease_response(*body);
        if (!leased) {
          error("lease answer: " + leased.error().message, 1);
          continue;
        }
        if (leased->tasks.empty()) {
          // As tasks_load: a real node waits for its next heartbeat's hint.
          ++tally.empty_leases;
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
          continue;
        }
        std::vector<protocol::CompleteItem> items;
        std::vector<std::size_t> index;
        for (const auto& t : leased->tasks) {
          protocol::CompleteItem item;
          item.id = t.id;
          item.request.fence = t.fence;
          item.request.outcome = "succeeded";
          item.request.exit_code = 0;
          items.push_back(std::move(item));
          std::size_t idx = n;
          if (auto argv = t.args.find("argv"); argv != t.args.end() && argv->is_array() && argv->size() == 2 &&
                                                (*argv)[1].is_string()) {
            idx = static_cast<std::size_t>(std::strtoull((*argv)[1].get<std::string>().c_str(), nullptr, 10));
          }
          index.push_back(idx);
        }
        for (std::size_t from = 0; from < items.size(); from += static_cast<std::size_t>(o.complete_batch)) {
          const std::size_t to = std::min(items.size(), from + static_cast<std::size_t>(o.complete_batch));
          std::vector<bool> ok(to - from, false);
          ++requests;
          if (to - from == 1) {
            auto answer = call(*node.client, "POST", node.server + "/v1/tasks/" + items[from].id + "/complete",
                               dump_json(protocol::to_json(items[from].request)));
            if (!answer) {
              error("complete: " + answer.error().message, 1);
              continue;
            }
            ok[0] = true;
          } else {
            protocol::CompleteBatchRequest batch;
            batch.completions.assign(items.begin() + static_cast<std::ptrdiff_t>(from),
                                     items.begin() + static_cast<std::ptrdiff_t>(to));
            auto answer = call(*node.client, "POST", node.server + "/v1/tasks/complete",
                               dump_json(protocol::to_json(batch)));
            auto results = answer ? protocol::decode_complete_batch_response(*answer)
                                  : Result<protocol::CompleteBatchResponse>(fail(answer.error()));
            if (!results || results->results.size() != to - from) {
              error("complete batch: " + (results ? std::string("wrong number of results") : results.error().message),
                    static_cast<std::int64_t>(to - from));
              continue;
            }
            for (std::size_t k = 0; k < to - from; ++k) {
              if (results->results[k].ok()) ok[k] = true;
              else error("complete: " + results->results[k].code + " " + results->results[k].message, 1);
            }
          }
          for (std::size_t k = 0; k < to - from; ++k) {
            const std::size_t idx = index[from + k];
            if (!ok[k]) continue;
            if (idx >= n) {
              error("a leased task without the bench's index in argv", 1);
              continue;
            }
            tally.completed(w, idx);
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = tally.elapsed_s();
  const double driver_cpu = bench::self_cpu_s() - self_cpu0;
  const double pg_cpu = o.pg_postmaster != 0 ? postgres_cpu_s(o.pg_postmaster) - pg_cpu0 : 0;
  double server_cpu = 0;
  for (std::size_t k = 0; k < o.server_pids.size(); ++k) server_cpu += process_cpu_s(o.server_pids[k]) - server_cpu0[k];
  if (!first_error.empty()) std::cerr << "tasks_http: first error: " << first_error << "\n";

  // The store the servers share, checked after the run when named.
  bench::StoreCheck store;
  if (!o.database.empty()) {
    auto opened = bench::open_bench_store(o.database, 2);
    auto check = opened ? bench::check_store(**opened, o.tasks) : Result<bench::StoreCheck>(fail(opened.error()));
    if (check) store = *check;
    else std::cerr << "tasks_http: store check: " << check.error().message << "\n";
  }
  Json out = tally.report(seconds, driver_cpu, store);
  out["transport"] = "https";
  out["replicas"] = static_cast<std::int64_t>(o.servers.size());
  out["enroll_s"] = enroll_s;
  out["setup_s"] = setup_s;
  out["server_cpu_s"] = server_cpu;
  out["requests"] = requests.load();
  if (o.pg_postmaster != 0) out["pg_cpu_s"] = pg_cpu;
  std::cout << dump_json(out) << "\n";
  return tally.exactly_once() && (o.database.empty() || store.exactly_once(o.tasks)) ? 0 : 2;
}
