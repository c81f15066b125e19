// One client connection of the HTTPS server, and what every connection of an io thread
// shares. A connection lives on one io thread (Worker) for its whole life, so nothing in it
// is locked; its deadline is a timestamp the worker's sweep checks.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/ssl.hpp"
#include "control/server/metrics.hpp"
#include "control/server/rate_limit.hpp"
#include "control/server/router.hpp"
#include "control/server/server.hpp"

namespace cairn::control::server {

using SteadyClock = std::chrono::steady_clock;

// What every connection shares with the server.
struct ServerShared {
  ServerConfig config;
  RequestHandler handler;
  Metrics& metrics;
  SslCtxPtr tls;
  TokenBucket enroll_bucket;
  std::atomic<bool> stopping{false};
  std::atomic<std::int64_t> in_flight{0};
  // The server's store pool (ServerConfig::store_threads), or null. Owned by the server, which
  // joins it before its io_contexts go: a session never owns it, so a job that drops the last
  // reference to a session cannot destroy the pool from one of its own threads.
  boost::asio::thread_pool* store_pool = nullptr;

  ServerShared(ServerConfig c, RequestHandler h, Metrics& m)
      : config(std::move(c)),
        handler(std::move(h)),
        metrics(m),
        enroll_bucket(config.enroll_rate, config.enroll_burst) {}
};

class Session;

// One io thread: its io_context, the connections it owns, their deadline sweep and one read
// buffer they take turns with (an idle connection holds none).
struct Worker {
  static constexpr std::size_t kReadChunk = 16 << 10;  // one TLS record of plaintext
  boost::asio::io_context ioc{1};
  std::vector<std::shared_ptr<Session>> sessions;  // Session::slot_ is the index
  boost::asio::steady_timer sweep{ioc};
  std::array<char, kReadChunk> scratch{};
};

// The connection, reactor style. Every wake-up (socket ready, an answer computed, a slice of
// work posted) runs turn(): read -> parse -> dispatch -> write, in a loop bounded by
// requests and reads per turn, never by recursion, so a client pipelining 100,000 requests
// gets them answered in order, a slice per turn, while the other connections get theirs.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(boost::asio::ip::tcp::socket&& socket, ServerShared& shared, Worker& worker);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  // On the worker's thread: registers with the worker and starts the handshake.
  void start();
  // On stop: a keep-alive connection waiting for its next request is closed (close_notify).
  void close_if_idle();
  // Closes the connection if its current phase ran past its deadline.
  void expire_if_due(SteadyClock::time_point now);

 private:
  enum class Phase {
    handshake,  // TLS handshake in progress
    reading,    // waiting for / parsing a request (idle keep-alive included)
    handling,   // the handler has the request; its answer resumes the turn
    writing,    // an answer is being written
    closing,    // close_notify and FIN sent; reading what the peer still sends (lingering close)
  };
  enum class Io { done, again, closed, failed };  // `again`: a readiness wait is armed

  void turn();
  void yield();  // lets the worker's other connections run, then continues
  Io tls_result(int rc);
  Io handshake();
  void on_handshake_done();
  Io read_some();
  bool parse();  // true: a request went on (dispatched or refused); false: needs more bytes
  void on_parse_error(boost::beast::error_code ec);
  void dispatch();
  void refuse(Reply reply);
  void answer(Reply reply);
  Io write_some();
  void after_write();
  Io drain();
  void begin_closing();
  void send_close_notify();
  void close_now();
  void begin_request();
  void end_request();
  [[nodiscard]] std::string serialize(const Reply& reply, unsigned version) const;

  ServerShared& shared_;
  Worker& worker_;
  std::size_t slot_ = 0;
  boost::asio::ip::tcp::socket socket_;
  SslPtr ssl_;
  Phase phase_ = Phase::handshake;
  SteadyClock::time_point deadline_{};
  bool closed_ = false;
  bool tls_failed_ = false;  // a fatal TLS error: no close_notify may follow (man SSL_shutdown)
  bool close_notify_sent_ = false;
  bool in_flight_ = false;
  bool in_route_ = false;
  bool header_seen_ = false;
  bool keep_alive_ = false;
  bool head_request_ = false;
  std::uint64_t request_seq_ = 0;  // which request a handler's answer belongs to
  std::string in_;  // decrypted bytes; [in_pos_, size) not parsed yet
  std::size_t in_pos_ = 0;
  std::string out_;  // the answer being written; [out_pos_, size) not taken by OpenSSL yet
  std::size_t out_pos_ = 0;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  std::optional<Reply> sync_reply_;
  Peer peer_;
  std::string peer_error_;
  std::size_t requests_ = 0;
  std::size_t drained_ = 0;
  Endpoint endpoint_ = Endpoint::other;
  SteadyClock::time_point started_{};
};

}  // namespace cairn::control::server
