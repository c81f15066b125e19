// verify_bench FILE [--repeat N] [--registry HOST]: throughput of the module digests over FILE
// (issue 14, "Benchmark"): SHA-256 alone, the fs-verity Merkle tree alone, both on one thread,
// both on two threads (what cairn verifies with). With --registry (a plain-http registry on
// loopback) also the end-to-end time to push FILE as a module, then resolve, fetch (streamed
// sha256) and verify it (sha256 + fs-verity). Prints one JSON object. Run by tools/bench/verify.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/json.hpp"
#include "common/module/fsverity.hpp"
#include "common/module/manifest.hpp"
#include "common/module/signature.hpp"
#include "common/oci/module_artifact.hpp"

using namespace cairn;
using Steady = std::chrono::steady_clock;

namespace {

double seconds_since(Steady::time_point start) {
  return std::chrono::duration<double>(Steady::now() - start).count();
}

double cpu_seconds(int who = RUSAGE_SELF) {
  rusage ru{};
  ::getrusage(who, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Best of `repeat` runs of fn over the file, in MB/s (10^6 bytes): by wall clock; by the
// process's CPU time (what `openssl speed` divides by unless -elapsed; robust to a busy
// machine); and by the CPU time of the busiest thread (the caller's, or all the others' together:
// digest_file's worker has ended by then and its time is in the process's). With two threads
// the busiest one bounds the wall clock of an idle two-core machine: the load-proof figure.
template <class Fn>
Json best_mbps(std::uint64_t size, int repeat, Fn&& fn) {
  double wall = 0;
  double cpu = 0;
  double busiest = 0;
  const auto mbps = [&](double seconds) { return static_cast<double>(size) / std::max(1e-6, seconds) / 1e6; };
  for (int i = 0; i < repeat; ++i) {
    const auto start = Steady::now();
    const double cpu_start = cpu_seconds();
    const double caller_start = cpu_seconds(RUSAGE_THREAD);
    fn();
    const double all = cpu_seconds() - cpu_start;
    const double caller = cpu_seconds(RUSAGE_THREAD) - caller_start;
    wall = std::max(wall, mbps(seconds_since(start)));
    cpu = std::max(cpu, mbps(all));
    busiest = std::max(busiest, mbps(std::max(caller, all - caller)));
  }
  return Json{{"wall", wall}, {"cpu", cpu}, {"busiest_thread_cpu", busiest}};
}

// Reads the file in 1 MiB chunks into a stream (one kind of hash, one thread).
template <class Stream>
void stream_file(const std::string& path, Stream& s) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) s.update(buf.data(), static_cast<std::size_t>(in.gcount()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: verify_bench FILE [--repeat N] [--registry HOST]\n";
    return 64;
  }
  const std::string path = argv[1];
  int repeat = 3;
  std::string registry_host;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--repeat") == 0) repeat = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--registry") == 0) registry_host = argv[i + 1];
  }
  auto first = module::digest_file(path, 2);  // warms the page cache, gives the size
  if (!first) {
    std::cerr << "verify_bench: " << first.error().message << "\n";
    return 66;
  }
  const std::uint64_t size = first->size;
  Json out = {{"file_bytes", size}, {"repeat", repeat}};
  out["sha256_only_mbps"] = best_mbps(size, repeat, [&] {
    module::Sha256Stream s;
    stream_file(path, s);
    (void)s.finish_hex();
  });
  out["fsverity_only_mbps"] = best_mbps(size, repeat, [&] {
    module::FsverityStream s;
    stream_file(path, s);
    (void)s.finish_hex();
  });
  out["both_one_thread_mbps"] = best_mbps(size, repeat, [&] { (void)module::digest_file(path, 1); });
  out["both_two_threads_mbps"] = best_mbps(size, repeat, [&] { (void)module::digest_file(path, 2); });

  if (!registry_host.empty()) {
    // Push FILE as a signed module, then time what the agent does before mounting it.
    module::Manifest m{"bench", "1.0", 10, size, first->sha256, first->fsverity, {}};
    const std::string manifest_text = module::canonical_bytes(m) + "\n";
    auto key = generate_key(KeyType::ed25519);
    auto sig = module::sign_manifest(key->get(), m);
    if (!sig) return 70;
    oci::RegistryOptions options;
    options.scheme = "http";
    auto http = make_http_client();
    oci::Registry registry(*http, registry_host, options);
    auto ref = oci::parse_reference(registry_host + "/cairn/bench:1.0");
    auto start = Steady::now();
    auto pushed = oci::push_module(registry, *ref, path, manifest_text, module::serialize_signature(*sig));
    if (!pushed) {
      std::cerr << "verify_bench: push: " << pushed.error().message << "\n";
      return 69;
    }
    out["push_s"] = seconds_since(start);
    const std::string dest = path + ".fetched";
    start = Steady::now();
    auto resolved = oci::resolve_module(registry, *ref);
    if (!resolved) return 69;
    if (auto s = oci::fetch_image(registry, *ref, *resolved, dest); !s) {
      std::cerr << "verify_bench: fetch: " << s.error().message << "\n";
      return 69;
    }
    const double fetch_s = seconds_since(start);
    auto parsed = module::parse_manifest(resolved->module_manifest);
    auto parsed_sig = module::parse_signature(resolved->signatures.at(0));
    if (!parsed || !parsed_sig || !module::verify_manifest(*parsed, *parsed_sig, key->get())) return 77;
    auto d = module::digest_file(dest, 2);
    if (!d || !module::check_image(*parsed, *d)) return 65;
    out["fetch_s"] = fetch_s;
    out["fetch_verify_s"] = seconds_since(start);
    std::remove(dest.c_str());
  }
  std::cout << dump_json(out, 2) << "\n";
  return 0;
}
