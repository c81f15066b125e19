#include "tests/support/http_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace cairn::test {
namespace {

constexpr std::size_t kMaxHeaderBytes = 64 * 1024;
constexpr std::size_t kMaxBodyBytes = 16 * 1024 * 1024;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

// Parses the head (request line + headers, without the blank line).
bool parse_head(std::string_view head, HttpServer::Request& request) {
  const auto line_end = head.find("\r\n");
  const std::string_view line = head.substr(0, line_end);
  const auto sp1 = line.find(' ');
  const auto sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1) return false;
  request.method = std::string(line.substr(0, sp1));
  request.target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  const auto q = request.target.find('?');
  request.path = request.target.substr(0, q);
  request.query = q == std::string::npos ? std::string() : request.target.substr(q + 1);
  std::string_view rest = line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
  while (!rest.empty()) {
    const auto end = rest.find("\r\n");
    const std::string_view header = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 2);
    const auto colon = header.find(':');
    if (colon == std::string_view::npos) return false;
    request.headers[lower(std::string(header.substr(0, colon)))] = trim(header.substr(colon + 1));
  }
  return true;
}

}  // namespace

std::string HttpServer::Request::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

bool HttpServer::Request::has_header(const std::string& lower_name) const {
  return headers.contains(lower_name);
}

std::string HttpServer::Request::query_param(std::string_view name) const {
  std::string_view rest(query);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) {
      return eq == std::string_view::npos ? std::string() : std::string(pair.substr(eq + 1));
    }
  }
  return {};
}

HttpServer::HttpServer(Handler handler) : handler_(std::move(handler)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (listen_fd_ < 0 || stop_fd_ < 0) throw std::runtime_error("HttpServer: socket/eventfd failed");
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listen_fd_);
    ::close(stop_fd_);
    throw std::runtime_error("HttpServer: cannot listen on loopback: " + why);
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

HttpServer::~HttpServer() {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof one);
  acceptor_.join();
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mutex_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
}

std::string HttpServer::base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

bool HttpServer::wait_for(int fd, short events, int timeout_ms) const {
  pollfd fds[2] = {{fd, events, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    const int rc = ::poll(fds, 2, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return false;
    if (fds[1].revents != 0) return false;
    return true;
  }
}

void HttpServer::accept_loop() {
  for (;;) {
    if (!wait_for(listen_fd_, POLLIN, -1)) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ++connections_;
    std::lock_guard lock(mutex_);
    workers_.emplace_back([this, fd] {
      serve(fd);
      ::close(fd);
    });
  }
}

void HttpServer::serve(int fd) {
  std::string buffer;
  char chunk[16384];
  const auto read_more = [&]() -> bool {
    if (!wait_for(fd, POLLIN, -1)) return false;
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<std::size_t>(n));
    return true;
  };
  for (;;) {  // one request per turn: keep-alive
    std::size_t head_end;
    while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos) {
      if (buffer.size() > kMaxHeaderBytes || !read_more()) return;
    }
    Request request;
    if (!parse_head(std::string_view(buffer).substr(0, head_end), request)) return;
    buffer.erase(0, head_end + 4);
    std::size_t length = 0;
    if (request.has_header("content-length")) {
      const auto text = request.header("content-length");
      if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return;
      length = std::strtoull(text.c_str(), nullptr, 10);
      if (length > kMaxBodyBytes) return;
    }
    while (buffer.size() < length) {
      if (!read_more()) return;
    }
    request.body = buffer.substr(0, length);
    buffer.erase(0, length);
    ++requests_;

    Response response;
    try {
      response = handler_(request);
    } catch (const std::exception& e) {
      response = Response{500, {}, std::string("handler threw: ") + e.what(), {}, false};
    }
    if (response.never_answer) {
      // Silent until the client gives up (the socket reads EOF) or the server stops.
      while (wait_for(fd, POLLIN, -1)) {
        if (::recv(fd, chunk, sizeof chunk, 0) <= 0) return;
      }
      return;
    }
    if (response.delay.count() > 0) {
      // Returns early only when the server stops; a closing client is noticed on write.
      pollfd stop = {stop_fd_, POLLIN, 0};
      if (::poll(&stop, 1, static_cast<int>(response.delay.count())) != 0) return;
    }
    std::string out = "HTTP/1.1 " + std::to_string(response.status) + " " +
                      reason_phrase(response.status) + "\r\n";
    for (const auto& [k, v] : response.headers) out += k + ": " + v + "\r\n";
    out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
    const bool close_after = lower(request.header("connection")) == "close";
    if (close_after) out += "Connection: close\r\n";
    out += "\r\n";
    if (request.method != "HEAD") out += response.body;
    std::string_view rest(out);
    while (!rest.empty()) {
      if (!wait_for(fd, POLLOUT, -1)) return;
      const ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return;  // the client went away (e.g. it refused an oversized body)
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    if (close_after) return;
  }
}

}  // namespace cairn::test
