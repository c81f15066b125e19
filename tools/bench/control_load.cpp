// Load driver for the control-service benchmark (issue 3, "Benchmark"; issue 12 adds nginx):
// simulates N nodes in one process (one io_context, one thread), enrolls them through the real
// /v1/enroll, keeps one mTLS connection per node open and sends heartbeats open-loop at a fixed
// rate, then does the same against a trivial HTTPS responder (what our logic and storage cost)
// and against nginx answering `return 200` with the same certificates (a stock, widely deployed
// mTLS server as the anchor).
// Latency is measured from each request's *scheduled* send time, so a slow server cannot hide
// its queueing by slowing the driver down (no coordinated omission).
#include <dirent.h>
#include <sqlite3.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/json.hpp"
#include "common/protocol/messages.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tools/bench/tls_stream.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using cairn::bench::TlsStream;

[[noreturn]] void die(const std::string& message) {
  std::cerr << "control_load: " << message << "\n";
  std::exit(1);
}

struct Options {
  std::string target;    // HOST:PORT of cairn-control serve
  int target_pid = 0;
  std::string baseline;  // HOST:PORT of trivial_responder ("" = skip)
  int baseline_pid = 0;
  std::string nginx;     // HOST:PORT of the nginx anchor ("" = skip)
  int nginx_pid = 0;     // its master: the figures sum the master and its workers
  std::string ca_file;
  std::string token;
  std::string db;        // control.db, to count persisted heartbeats ("" = skip)
  std::string out;       // JSON figures ("" = none)
  int nodes = 10'000;
  double rate = 5'000;
  double duration_s = 30;
  double warmup_s = 5;
  int enroll_concurrency = 16;
  int connect_concurrency = 64;  // handshakes in flight: more only queues them past the server's timeouts
};

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(flag + ": needs a value");
      return argv[++i];
    };
    if (flag == "--target") o.target = value();
    else if (flag == "--target-pid") o.target_pid = std::stoi(value());
    else if (flag == "--baseline") o.baseline = value();
    else if (flag == "--baseline-pid") o.baseline_pid = std::stoi(value());
    else if (flag == "--nginx") o.nginx = value();
    else if (flag == "--nginx-pid") o.nginx_pid = std::stoi(value());
    else if (flag == "--ca") o.ca_file = value();
    else if (flag == "--token") o.token = value();
    else if (flag == "--db") o.db = value();
    else if (flag == "--out") o.out = value();
    else if (flag == "--nodes") o.nodes = std::stoi(value());
    else if (flag == "--rate") o.rate = std::stod(value());
    else if (flag == "--duration") o.duration_s = std::stod(value());
    else if (flag == "--warmup") o.warmup_s = std::stod(value());
    else if (flag == "--enroll-concurrency") o.enroll_concurrency = std::stoi(value());
    else if (flag == "--connect-concurrency") o.connect_concurrency = std::stoi(value());
    else die("unknown flag " + flag + " (see tools/bench/run)");
  }
  if (o.target.empty() || o.ca_file.empty() || o.token.empty()) {
    die("--target HOST:PORT, --ca FILE and --token TOKEN are required");
  }
  if (o.nodes < 1 || o.rate <= 0 || o.duration_s <= 0 || o.warmup_s < 0) die("bad --nodes/--rate/--duration");
  return o;
}

tcp::endpoint parse_endpoint(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) die("'" + text + "': expected HOST:PORT");
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {asio::ip::make_address(host), static_cast<std::uint16_t>(std::stoi(text.substr(colon + 1)))};
}

// --- the target processes, from /proc ---------------------------------------------------
// A target is a process and its direct children (nginx: the master and its workers; control
// and the trivial responder have none). RSS is summed over them, as `ps` users would add it up;
// PSS (proportional set size) is summed too, since the workers share pages with the master
// (code, libraries, copy-on-write configuration) that an RSS sum counts once per process.

struct ProcSample {
  double cpu_s = 0;  // utime + stime, summed
  double rss_mib = 0;
  double hwm_mib = 0;  // VmHWM, summed (each process's own peak)
  double pss_mib = 0;
  int processes = 0;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Fields after the ")" closing comm, numbered as in man 5 proc (state is field 3).
std::vector<std::string> stat_fields(int pid) {
  const std::string text = read_text("/proc/" + std::to_string(pid) + "/stat");
  std::vector<std::string> fields;
  const auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 > text.size()) return fields;
  std::istringstream in(text.substr(close + 2));
  fields.resize(3);  // 1 = pid, 2 = comm: not kept
  for (std::string f; in >> f;) fields.push_back(f);
  return fields;
}

std::vector<int> process_tree(int pid) {
  std::vector<int> pids{pid};
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return pids;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const int child = std::stoi(name);
    const auto f = stat_fields(child);
    if (f.size() > 4 && f[4] == std::to_string(pid)) pids.push_back(child);  // field 4: ppid
  }
  ::closedir(dir);
  return pids;
}

ProcSample sample_proc(int pid) {
  ProcSample s;
  if (pid <= 0) return s;
  for (const int p : process_tree(pid)) {
    const auto f = stat_fields(p);
    if (f.size() <= 15) continue;  // gone
    ++s.processes;
    s.cpu_s += (std::stod(f[14]) + std::stod(f[15])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
    auto kib_of = [](const std::string& line) { return std::stod(line.substr(line.find(':') + 1)) / 1024.0; };
    std::istringstream status(read_text("/proc/" + std::to_string(p) + "/status"));
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("VmRSS:")) s.rss_mib += kib_of(line);
      if (line.starts_with("VmHWM:")) s.hwm_mib += kib_of(line);
    }
    std::istringstream rollup(read_text("/proc/" + std::to_string(p) + "/smaps_rollup"));
    for (std::string line; std::getline(rollup, line);) {
      if (line.starts_with("Pss:")) s.pss_mib += kib_of(line);
    }
  }
  return s;
}

// --- simulated nodes ---------------------------------------------------------------------

struct Node {
  std::string id;
  cairn::EvpPkey key;
  std::string enroll_request;  // full HTTP request bytes
  cairn::X509Ptr cert;
  std::string heartbeat_request;  // full HTTP request bytes
};

std::string http_post(const std::string& host, const std::string& path, const std::string& body,
                      const std::string& extra_headers) {
  return "POST " + path + " HTTP/1.1\r\nHost: " + host +
         "\r\nUser-Agent: cairn-agent/0.1.0 (bench)\r\nContent-Type: application/json\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A heartbeat like an agent's with three modules mounted and a few labels (~600-700 bytes).
std::string heartbeat_body(const Node& node, std::size_t index, const std::string& not_after) {
  cairn::protocol::HeartbeatRequest hb;
  hb.boot_id = cairn::random_uuid().str();
  hb.agent_version = "0.1.0";
  for (const char* name : {"base", "runtime", "app-worker"}) {
    hb.modules.push_back({name, "sha256:" + cairn::sha256_hex(node.id + name), true});
  }
  hb.mount_state = "mounted";
  hb.load1 = 0.42 + static_cast<double>(index % 7) / 10;
  hb.load5 = 0.37;
  hb.load15 = 0.31;
  hb.cpu_count = 8;
  hb.mem_total_bytes = 16ULL << 30;
  hb.mem_available_bytes = (9ULL << 30) + index * 4096;
  hb.disk_total_bytes = 256ULL << 30;
  hb.disk_free_bytes = (200ULL << 30) - index * 65536;
  hb.uptime_s = 86'400 + index;
  hb.cert_not_after = not_after;
  hb.labels = {{"role", "worker"},
               {"zone", "zone-" + std::to_string(index % 4)},
               {"rack", "rack-" + std::to_string(index % 40)},
               {"pool", "batch"}};
  return cairn::dump_json(cairn::protocol::to_json(hb));
}

// One keep-alive TLS connection: connect + handshake, then request/response in turn.
class Client {
 public:
  using Done = std::function<void(beast::error_code, unsigned status, std::string body)>;

  Client(asio::io_context& ioc, SSL_CTX* ctx) : ioc_(ioc), ctx_(ctx) {}

  void connect(const tcp::endpoint& ep, X509* cert, EVP_PKEY* key, std::function<void(beast::error_code)> done) {
    socket_.emplace(ioc_);
    socket_->async_connect(ep, [this, cert, key, done = std::move(done)](beast::error_code ec) {
      if (ec) return done(ec);
      socket_->set_option(tcp::no_delay(true), ec);
      stream_.emplace(std::move(*socket_), ctx_);
      socket_.reset();
      SSL* ssl = stream_->native_handle();
      SSL_set_connect_state(ssl);
      if (cert != nullptr && (SSL_use_certificate(ssl, cert) != 1 || SSL_use_PrivateKey(ssl, key) != 1)) {
        die("client certificate: " + cairn::openssl_error());
      }
      stream_->async_handshake([done](beast::error_code ec2) { done(ec2); });
    });
  }

  void request(const std::string& bytes, Done done) {
    done_ = std::move(done);
    asio::async_write(*stream_, asio::buffer(bytes), [this](beast::error_code ec, std::size_t) {
      if (ec) return finish(ec);
      parser_.emplace();
      parser_->body_limit(1 << 20);
      http::async_read(*stream_, buffer_, *parser_, [this](beast::error_code ec2, std::size_t) { finish(ec2); });
    });
  }

  void close() {
    if (stream_) stream_->shutdown_and_close();
    if (socket_) {
      beast::error_code ignored;
      socket_->close(ignored);
    }
  }

 private:
  void finish(beast::error_code ec) {
    unsigned status = 0;
    std::string body;
    if (!ec) {
      status = parser_->get().result_int();
      body = std::move(parser_->get().body());
      if (!parser_->get().keep_alive()) ec = asio::error::connection_aborted;
    }
    parser_.reset();
    auto done = std::move(done_);
    done(ec, status, std::move(body));
  }

  asio::io_context& ioc_;
  SSL_CTX* ctx_;
  std::optional<tcp::socket> socket_;
  std::optional<TlsStream> stream_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
  Done done_;
};

cairn::SslCtxPtr client_context(const std::string& ca_file) {
  cairn::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) die("SSL_CTX_new: " + cairn::openssl_error());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_read_ahead(ctx.get(), 1);
  if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
    die("CA " + ca_file + ": " + cairn::openssl_error());
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  return ctx;
}

// --- enrollment --------------------------------------------------------------------------

struct EnrollFigures {
  int ok = 0;
  int failed = 0;
  double seconds = 0;
  double keygen_seconds = 0;
};

EnrollFigures enroll_all(asio::io_context& ioc, SSL_CTX* ctx, const tcp::endpoint& ep, const Options& o,
                         std::vector<Node>& nodes) {
  EnrollFigures fig;
  const auto keygen_start = Clock::now();
  const std::string host = o.target;
  for (auto& n : nodes) {
    n.id = cairn::random_uuid().str();
    auto key = cairn::generate_key(cairn::KeyType::ed25519);
    if (!key) die(key.error().message);
    n.key = std::move(*key);
    auto csr = cairn::make_csr_pem(n.key.get(), n.id);
    if (!csr) die(csr.error().message);
    cairn::protocol::EnrollRequest req;
    req.identity = {n.id, "local", "bench", "", "", "", "", "bench-" + n.id.substr(0, 8)};
    req.csr_pem = std::move(*csr);
    req.labels = {{"bench", "true"}};
    n.enroll_request = http_post(host, "/v1/enroll", cairn::dump_json(cairn::protocol::to_json(req)),
                                 "Authorization: Bearer " + o.token + "\r\n");
  }
  fig.keygen_seconds = std::chrono::duration<double>(Clock::now() - keygen_start).count();

  std::size_t next = 0;
  std::string first_error;
  std::vector<std::unique_ptr<Client>> clients;
  std::function<void(Client*)> enroll_next = [&](Client* c) {
    if (next >= nodes.size()) return c->close();
    Node& n = nodes[next++];
    c->request(n.enroll_request, [&, c, &n = n](beast::error_code ec, unsigned status, std::string body) {
      if (ec || status != 200) {
        ++fig.failed;
        if (first_error.empty()) first_error = ec ? ec.message() : std::to_string(status) + " " + body;
        if (ec) return;  // this connection is gone; the others carry on
      } else {
        auto answer = cairn::protocol::decode_certificate_response(body);
        auto cert = answer ? cairn::parse_cert_pem(answer->certificate_pem) : cairn::parse_cert_pem("");
        if (cert) {
          n.cert = std::move(*cert);
          ++fig.ok;
        } else {
          ++fig.failed;
        }
      }
      enroll_next(c);
    });
  };
  const auto start = Clock::now();
  for (int i = 0; i < o.enroll_concurrency; ++i) {
    clients.push_back(std::make_unique<Client>(ioc, ctx));
    Client* c = clients.back().get();
    c->connect(ep, nullptr, nullptr, [&, c](beast::error_code ec) {
      if (ec) {
        if (first_error.empty()) first_error = "connect: " + ec.message();
        return;
      }
      enroll_next(c);
    });
  }
  ioc.run();
  ioc.restart();
  fig.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (!first_error.empty()) std::cerr << "control_load: first enrollment error: " << first_error << "\n";
  return fig;
}

// --- connections and heartbeats ------------------------------------------------------------

struct LoadFigures {
  std::string name;
  int connected = 0;
  int connect_failed = 0;
  double connect_seconds = 0;
  double rss_connected_idle_mib = 0;
  double pss_connected_idle_mib = 0;
  int processes = 0;  // the target process and its children (nginx: master + workers)
  double offered_per_s = 0;
  double achieved_per_s = 0;
  std::uint64_t sent = 0;        // in the measured window
  std::uint64_t ok_total = 0;    // every 200, warm-up and drain included
  std::uint64_t errors = 0;      // in the measured window: non-200, broken connection, timeout
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;
  double rss_end_mib = 0, rss_max_mib = 0, hwm_mib = 0, pss_max_mib = 0;
  std::size_t answer_body_bytes = 0;  // of the last 200 answer: the answers compared are the same size
  double cpu_percent = 0;         // of one core, over the measured window
  double driver_cpu_percent = 0;  // the driver itself
  std::string first_error;
};

struct Conn {
  std::unique_ptr<Client> client;
  bool alive = false;
  bool busy = false;
  std::deque<Clock::time_point> queue;  // scheduled send times waiting for this connection
  Clock::time_point current{};
};

LoadFigures run_load(asio::io_context& ioc, SSL_CTX* ctx, const std::string& name, const std::string& target,
                     int pid, const Options& o, std::vector<Node>& nodes) {
  LoadFigures fig;
  fig.name = name;
  const tcp::endpoint ep = parse_endpoint(target);
  std::vector<Conn> conns(nodes.size());

  // Connect every node (and send its first heartbeat), a bounded number at a time.
  {
    std::size_t next = 0;
    std::function<void()> connect_next = [&] {
      if (next >= nodes.size()) return;
      const std::size_t i = next++;
      conns[i].client = std::make_unique<Client>(ioc, ctx);
      conns[i].client->connect(ep, nodes[i].cert.get(), nodes[i].key.get(), [&, i](beast::error_code ec) {
        if (ec) {
          ++fig.connect_failed;
          if (fig.first_error.empty()) fig.first_error = "connect: " + ec.message();
          return connect_next();
        }
        conns[i].alive = true;
        ++fig.connected;
        // Like an agent, the first heartbeat follows the handshake at once (the server gives
        // a fresh connection only its header timeout to send a request).
        conns[i].client->request(nodes[i].heartbeat_request, [&, i](beast::error_code ec2, unsigned status,
                                                                    std::string body) {
          if (!ec2 && status == 200) {
            ++fig.ok_total;
          } else {
            ++fig.connect_failed;
            --fig.connected;
            conns[i].alive = false;
            if (fig.first_error.empty()) {
              fig.first_error = "first heartbeat: " + (ec2 ? ec2.message() : std::to_string(status) + " " + body);
            }
          }
          connect_next();
        });
      });
    };
    const auto start = Clock::now();
    for (int i = 0; i < o.connect_concurrency; ++i) connect_next();
    ioc.run();
    ioc.restart();
    fig.connect_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
  // Settle for a moment, then see what 10k idle connections cost the server.
  {
    asio::steady_timer settle(ioc, std::chrono::seconds(2));
    settle.async_wait([](beast::error_code) {});
    ioc.run();
    ioc.restart();
  }
  {
    const ProcSample idle = sample_proc(pid);
    fig.rss_connected_idle_mib = idle.rss_mib;
    fig.pss_connected_idle_mib = idle.pss_mib;
    fig.processes = idle.processes;
  }

  const auto t0 = Clock::now() + std::chrono::milliseconds(10);
  const auto window_start = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup_s));
  const auto window_end =
      window_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));
  std::vector<std::uint32_t> latencies_us;
  latencies_us.reserve(static_cast<std::size_t>(o.rate * o.duration_s * 1.1));
  std::uint64_t scheduled = 0;     // sends scheduled so far (all phases)
  std::uint64_t outstanding = 0;   // scheduled, not yet answered
  std::uint64_t ok_in_window = 0;  // 200s completed inside the window
  std::size_t next_node = 0;
  bool scheduling = true;
  ProcSample at_start, driver_at_start;
  bool window_open = false;

  auto in_window = [&](Clock::time_point t) { return t >= window_start && t < window_end; };
  auto record_error = [&](Clock::time_point scheduled_at, const std::string& what) {
    if (in_window(scheduled_at)) ++fig.errors;
    if (fig.first_error.empty()) fig.first_error = what;
  };

  std::function<void(Conn&)> send_next = [&](Conn& c) {
    if (c.queue.empty() || c.busy) return;
    c.busy = true;
    c.current = c.queue.front();
    c.queue.pop_front();
    const std::size_t index = static_cast<std::size_t>(&c - conns.data());
    c.client->request(nodes[index].heartbeat_request, [&, &c = c](beast::error_code ec, unsigned status,
                                                                  std::string body) {
      const auto now = Clock::now();
      c.busy = false;
      --outstanding;
      if (ec) {
        record_error(c.current, "heartbeat: " + ec.message());
        c.alive = false;
        for (auto t : c.queue) {
          record_error(t, "heartbeat on a dead connection");
          --outstanding;
        }
        c.queue.clear();
        c.client->close();
        return;
      }
      if (status == 200) {
        ++fig.ok_total;
        fig.answer_body_bytes = body.size();
        if (in_window(c.current)) {
          latencies_us.push_back(static_cast<std::uint32_t>(
              std::chrono::duration_cast<std::chrono::microseconds>(now - c.current).count()));
        }
        if (in_window(now)) ++ok_in_window;
      } else {
        record_error(c.current, "heartbeat: HTTP " + std::to_string(status) + " " + body.substr(0, 300));
      }
      send_next(c);
    });
  };

  asio::steady_timer tick(ioc);
  asio::steady_timer sampler(ioc);
  double rss_max = 0, pss_max = 0;
  std::function<void()> sample = [&] {
    const ProcSample now = sample_proc(pid);
    rss_max = std::max(rss_max, now.rss_mib);
    pss_max = std::max(pss_max, now.pss_mib);
    if (!scheduling) return;
    sampler.expires_after(std::chrono::milliseconds(500));
    sampler.async_wait([&](beast::error_code ec) {
      if (!ec) sample();
    });
  };
  std::function<void()> on_tick = [&] {
    const auto now = Clock::now();
    if (!window_open && now >= window_start) {
      window_open = true;
      at_start = sample_proc(pid);
      driver_at_start = sample_proc(static_cast<int>(::getpid()));
      sample();
    }
    const auto horizon = std::min(now, window_end);
    const auto due = static_cast<std::uint64_t>(std::chrono::duration<double>(horizon - t0).count() * o.rate);
    while (scheduled < due) {
      const auto at = t0 + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(static_cast<double>(scheduled) / o.rate));
      ++scheduled;
      if (in_window(at)) ++fig.sent;
      Conn& c = conns[next_node];
      next_node = (next_node + 1) % conns.size();
      if (!c.alive) {
        record_error(at, "heartbeat on a dead connection");
        continue;
      }
      ++outstanding;
      c.queue.push_back(at);
      send_next(c);
    }
    if (now >= window_end) {
      scheduling = false;
      const auto at_end = sample_proc(pid);
      const auto driver_at_end = sample_proc(static_cast<int>(::getpid()));
      fig.cpu_percent = 100.0 * (at_end.cpu_s - at_start.cpu_s) / o.duration_s;
      fig.driver_cpu_percent = 100.0 * (driver_at_end.cpu_s - driver_at_start.cpu_s) / o.duration_s;
      fig.rss_end_mib = at_end.rss_mib;
      fig.hwm_mib = at_end.hwm_mib;
      rss_max = std::max(rss_max, at_end.rss_mib);
      pss_max = std::max(pss_max, at_end.pss_mib);
      sampler.cancel();
      // Give what is in flight 15 s to come back; what does not is a timeout.
      tick.expires_after(std::chrono::seconds(15));
      tick.async_wait([&](beast::error_code ec) {
        if (ec) return;
        for (auto& c : conns) {
          if (c.busy) {
            record_error(c.current, "heartbeat: no answer 15 s after the window");
            c.client->close();
          }
        }
      });
      return;
    }
    tick.expires_after(std::chrono::milliseconds(1));
    tick.async_wait([&](beast::error_code ec) {
      if (!ec) on_tick();
    });
  };
  // Stop the drain timer as soon as the last answer is in.
  asio::steady_timer drained(ioc);
  std::function<void()> check_drained = [&] {
    if (!scheduling && outstanding == 0) {
      tick.cancel();
      return;
    }
    drained.expires_after(std::chrono::milliseconds(20));
    drained.async_wait([&](beast::error_code ec) {
      if (!ec) check_drained();
    });
  };
  tick.expires_at(t0);
  tick.async_wait([&](beast::error_code ec) {
    if (!ec) on_tick();
  });
  check_drained();
  ioc.run();
  ioc.restart();

  fig.rss_max_mib = rss_max;
  fig.pss_max_mib = pss_max;
  fig.offered_per_s = static_cast<double>(fig.sent) / o.duration_s;
  fig.achieved_per_s = static_cast<double>(ok_in_window) / o.duration_s;
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double p) {
    if (latencies_us.empty()) return 0.0;
    const auto i = static_cast<std::size_t>(p * static_cast<double>(latencies_us.size() - 1));
    return latencies_us[i] / 1000.0;
  };
  fig.p50_ms = pct(0.50);
  fig.p90_ms = pct(0.90);
  fig.p99_ms = pct(0.99);
  fig.p999_ms = pct(0.999);
  fig.max_ms = latencies_us.empty() ? 0 : latencies_us.back() / 1000.0;

  for (auto& c : conns) {
    if (c.client) c.client->close();
  }
  ioc.run();  // lets closed sockets' handlers finish
  ioc.restart();
  return fig;
}

// Heartbeats the store holds for our nodes (node_status.heartbeats counts each one written).
std::int64_t persisted_heartbeats(const std::string& db_file) {
  sqlite3* raw = nullptr;
  if (sqlite3_open_v2(db_file.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(raw);
    return -1;
  }
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> db(raw, sqlite3_close);
  sqlite3_busy_timeout(db.get(), 5000);
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db.get(), "SELECT COALESCE(SUM(heartbeats), 0) FROM node_status", -1, &stmt, nullptr) !=
      SQLITE_OK) {
    return -1;
  }
  std::int64_t total = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) total = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  return total;
}

cairn::Json figures_json(const LoadFigures& f) {
  return {{"connected", f.connected},
          {"connect_failed", f.connect_failed},
          {"connect_seconds", f.connect_seconds},
          {"handshakes_per_s", f.connect_seconds > 0 ? f.connected / f.connect_seconds : 0},
          {"processes", f.processes},
          {"rss_connected_idle_mib", f.rss_connected_idle_mib},
          {"pss_connected_idle_mib", f.pss_connected_idle_mib},
          {"heartbeats_offered_per_s", f.offered_per_s},
          {"heartbeats_per_s", f.achieved_per_s},
          {"sent_in_window", f.sent},
          {"ok_total", f.ok_total},
          {"errors", f.errors},
          {"answer_body_bytes", f.answer_body_bytes},
          {"latency_ms", {{"p50", f.p50_ms}, {"p90", f.p90_ms}, {"p99", f.p99_ms}, {"p999", f.p999_ms},
                          {"max", f.max_ms}}},
          {"rss_mib", {{"end", f.rss_end_mib}, {"max_in_window", f.rss_max_mib}, {"peak_vmhwm", f.hwm_mib}}},
          {"pss_mib", {{"max_in_window", f.pss_max_mib}}},
          {"cpu_percent_of_one_core", f.cpu_percent},
          {"driver_cpu_percent_of_one_core", f.driver_cpu_percent},
          {"first_error", f.first_error}};
}

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

// cairn-control's figures over another target's (> 1: control has more of it).
cairn::Json ratios_json(const LoadFigures& ours, const LoadFigures& other) {
  return {{"heartbeats_per_s", ratio(ours.achieved_per_s, other.achieved_per_s)},
          {"p50", ratio(ours.p50_ms, other.p50_ms)},
          {"p99", ratio(ours.p99_ms, other.p99_ms)},
          {"cpu", ratio(ours.cpu_percent, other.cpu_percent)},
          {"rss_idle", ratio(ours.rss_connected_idle_mib, other.rss_connected_idle_mib)},
          {"rss_max", ratio(ours.rss_max_mib, other.rss_max_mib)},
          {"pss_max", ratio(ours.pss_max_mib, other.pss_max_mib)}};
}

std::string num(double v, int precision = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// One column per target, then cairn-control / each other target.
void print_table(const std::vector<LoadFigures>& columns) {
  const LoadFigures& ours = columns.front();
  std::printf("\n%-36s", "metric");
  for (const auto& c : columns) std::printf(" %14s", c.name.c_str());
  for (std::size_t i = 1; i < columns.size(); ++i) std::printf(" %14s", ("ctl/" + columns[i].name).c_str());
  std::printf("\n");
  auto row = [&](const char* name, auto get, int precision) {
    std::printf("%-36s", name);
    for (const auto& c : columns) std::printf(" %14s", num(get(c), precision).c_str());
    for (std::size_t i = 1; i < columns.size(); ++i) {
      const double b = get(columns[i]);
      std::printf(" %14s", b != 0 ? (num(get(ours) / b, 2) + "x").c_str() : "-");
    }
    std::printf("\n");
  };
  using F = const LoadFigures&;
  row("processes (sum over)", [](F f) { return double(f.processes); }, 0);
  row("connections established", [](F f) { return double(f.connected); }, 0);
  row("connect phase (s)", [](F f) { return f.connect_seconds; }, 1);
  row("TLS handshakes/s (connect phase)", [](F f) { return f.connected / std::max(f.connect_seconds, 1e-9); }, 0);
  row("heartbeats/s offered", [](F f) { return f.offered_per_s; }, 0);
  row("heartbeats/s achieved (200)", [](F f) { return f.achieved_per_s; }, 0);
  row("answer body (bytes)", [](F f) { return double(f.answer_body_bytes); }, 0);
  row("latency p50 (ms)", [](F f) { return f.p50_ms; }, 2);
  row("latency p90 (ms)", [](F f) { return f.p90_ms; }, 2);
  row("latency p99 (ms)", [](F f) { return f.p99_ms; }, 2);
  row("latency p99.9 (ms)", [](F f) { return f.p999_ms; }, 2);
  row("latency max (ms)", [](F f) { return f.max_ms; }, 2);
  row("errors (window)", [](F f) { return double(f.errors); }, 0);
  row("RSS, N idle connections (MiB)", [](F f) { return f.rss_connected_idle_mib; }, 1);
  row("RSS max in window (MiB)", [](F f) { return f.rss_max_mib; }, 1);
  row("RSS peak VmHWM (MiB)", [](F f) { return f.hwm_mib; }, 1);
  row("PSS, N idle connections (MiB)", [](F f) { return f.pss_connected_idle_mib; }, 1);
  row("PSS max in window (MiB)", [](F f) { return f.pss_max_mib; }, 1);
  row("server CPU (% of one core)", [](F f) { return f.cpu_percent; }, 1);
  row("driver CPU (% of one core)", [](F f) { return f.driver_cpu_percent; }, 1);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_options(argc, argv);
    // TlsStream writes with SSL_write on the raw fd: a peer that closed must be an error, not
    // a signal.
    std::signal(SIGPIPE, SIG_IGN);
    asio::io_context ioc(1);
    auto ctx = client_context(o.ca_file);
    std::vector<Node> nodes(static_cast<std::size_t>(o.nodes));

    std::cerr << "control_load: enrolling " << o.nodes << " nodes through /v1/enroll\n";
    const EnrollFigures enroll = enroll_all(ioc, ctx.get(), parse_endpoint(o.target), o, nodes);
    std::cerr << "control_load: enrolled " << enroll.ok << " (" << enroll.failed << " failed) in "
              << num(enroll.seconds, 1) << " s: " << num(enroll.ok / enroll.seconds, 0) << "/s\n";
    // Nodes that failed to enroll cannot heartbeat; they are left out (and reported).
    std::erase_if(nodes, [](const Node& n) { return !n.cert; });
    if (nodes.empty()) die("no node enrolled; see the first enrollment error above");

    std::size_t body_bytes = 0;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      const auto info = cairn::cert_info(nodes[i].cert.get());
      const std::string body = heartbeat_body(nodes[i], i, cairn::format_rfc3339(info.not_after));
      body_bytes += body.size();
      nodes[i].heartbeat_request = http_post(o.target, "/v1/heartbeat", body, "");
      nodes[i].enroll_request.clear();
      nodes[i].enroll_request.shrink_to_fit();
    }
    const double avg_body = static_cast<double>(body_bytes) / static_cast<double>(nodes.size());

    std::cerr << "control_load: cairn-control: " << nodes.size() << " connections, " << o.rate << " heartbeats/s, "
              << o.warmup_s << " s warm-up + " << o.duration_s << " s measured\n";
    const LoadFigures ours = run_load(ioc, ctx.get(), "cairn-control", o.target, o.target_pid, o, nodes);
    const std::int64_t persisted = o.db.empty() ? -1 : persisted_heartbeats(o.db);

    std::vector<LoadFigures> columns{ours};
    if (!o.baseline.empty()) {
      std::cerr << "control_load: baseline (trivial responder), same load\n";
      columns.push_back(run_load(ioc, ctx.get(), "trivial", o.baseline, o.baseline_pid, o, nodes));
    }
    if (!o.nginx.empty()) {
      std::cerr << "control_load: anchor (nginx, return 200), same load\n";
      columns.push_back(run_load(ioc, ctx.get(), "nginx", o.nginx, o.nginx_pid, o, nodes));
    }

    std::printf("enrollments: %d ok, %d failed in %.1f s = %.0f enrollments/s (%d concurrent; client key+CSR "
                "generation excluded: %.1f s)\n",
                enroll.ok, enroll.failed, enroll.seconds, enroll.ok / enroll.seconds, o.enroll_concurrency,
                enroll.keygen_seconds);
    std::printf("heartbeat body: %.0f bytes on average\n", avg_body);
    if (persisted >= 0) {
      // Stored but unanswered happens when a connection drops after the commit (overload,
      // idle timeout); answered but not stored would be a lost heartbeat.
      const auto answered = static_cast<std::int64_t>(ours.ok_total);
      std::printf("persisted heartbeats in control.db: %lld, answered 200: %lld (%s)\n",
                  static_cast<long long>(persisted), static_cast<long long>(answered),
                  persisted == answered  ? "every answered heartbeat is stored"
                  : persisted > answered ? "every answered heartbeat is stored; the rest lost their answer"
                                         : "LOST: answered 200 but not stored");
    }
    print_table(columns);
    for (const auto& c : columns) {
      if (!c.first_error.empty()) std::printf("first error (%s): %s\n", c.name.c_str(), c.first_error.c_str());
    }

    if (!o.out.empty()) {
      cairn::Json out = {
          {"nodes", o.nodes},
          {"rate", o.rate},
          {"duration_s", o.duration_s},
          {"warmup_s", o.warmup_s},
          {"cores", static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN))},
          {"heartbeat_body_bytes", avg_body},
          {"enroll", {{"ok", enroll.ok}, {"failed", enroll.failed}, {"seconds", enroll.seconds},
                      {"per_s", enroll.ok / enroll.seconds}, {"concurrency", o.enroll_concurrency}}},
          {"persisted_heartbeats", persisted},
          {"answered_heartbeats", ours.ok_total},
          {"every_answered_heartbeat_persisted",
           persisted >= 0 ? cairn::Json(persisted >= static_cast<std::int64_t>(ours.ok_total)) : cairn::Json()},
          {"cairn_control", figures_json(ours)},
      };
      // "ratio" (vs the trivial responder) keeps its issue-3 name; "ratio_vs_nginx" is new.
      for (std::size_t i = 1; i < columns.size(); ++i) {
        out[columns[i].name] = figures_json(columns[i]);
        out[columns[i].name == "trivial" ? "ratio" : "ratio_vs_" + columns[i].name] = ratios_json(ours, columns[i]);
      }
      std::ofstream file(o.out);
      file << cairn::dump_json(out, 2) << "\n";
      if (!file) die("cannot write " + o.out);
    }
    const bool lost = persisted >= 0 && persisted < static_cast<std::int64_t>(ours.ok_total);
    return lost ? 2 : 0;
  } catch (const std::exception& e) {
    std::cerr << "control_load: " << e.what() << "\n";
    return 70;
  }
}
