// A small real HTTP/1.1 server on 127.0.0.1 for tests: one handler function answers every
// request; a response can be delayed, never sent (to prove client timeouts) or oversized.
// One thread accepts, one thread per connection serves keep-alive requests; the destructor
// wakes them all and joins them, so no thread outlives the server.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace cairn::test {

class HttpServer {
 public:
  struct Request {
    std::string method;
    std::string target;  // as sent: path?query
    std::string path;    // target before '?'
    std::string query;   // target after '?', may be empty
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
    // The value of a lower-case header name, or "" when absent.
    [[nodiscard]] std::string header(const std::string& lower_name) const;
    [[nodiscard]] bool has_header(const std::string& lower_name) const;
    // The value of one query parameter (no percent-decoding), or "" when absent.
    [[nodiscard]] std::string query_param(std::string_view name) const;
  };
  struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::chrono::milliseconds delay{0};  // wait this long before answering
    bool never_answer = false;           // keep the connection open and silent until shutdown
  };
  using Handler = std::function<Response(const Request&)>;

  // Listens on 127.0.0.1 on an ephemeral port at once; throws std::runtime_error if it can't.
  explicit HttpServer(Handler handler);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();

  [[nodiscard]] std::uint16_t port() const { return port_; }
  [[nodiscard]] std::string base_url() const;  // "http://127.0.0.1:<port>"
  [[nodiscard]] std::size_t requests() const { return requests_.load(); }
  [[nodiscard]] std::size_t connections() const { return connections_.load(); }

 private:
  void accept_loop();
  void serve(int fd);
  // Waits until fd is ready for `events`, the server stops (false) or timeout passes (false).
  bool wait_for(int fd, short events, int timeout_ms) const;

  Handler handler_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // an eventfd; readable once the server stops
  std::uint16_t port_ = 0;
  std::atomic<std::size_t> requests_{0};
  std::atomic<std::size_t> connections_{0};
  std::mutex mutex_;
  std::vector<std::thread> workers_;
  std::thread acceptor_;
};

}  // namespace cairn::test
