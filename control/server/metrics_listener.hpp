// A plain-HTTP listener for Prometheus (GET /metrics) and liveness probes (GET /healthz),
// on its own address (`cairn-control serve --metrics-listen`), so the scrape port can stay on
// a management network while the API port faces the fleet. One request per connection,
// bounded in size, time and connections; everything else is 404.
#pragma once

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.hpp"
#include "control/server/server.hpp"

namespace cairn::control::server {

class MetricsListener {
 public:
  // Binds host:port (port 0 = any free port) on `ioc`; requests go to `handler`.
  static Result<std::unique_ptr<MetricsListener>> create(boost::asio::io_context& ioc, const std::string& host,
                                                         std::uint16_t port, RequestHandler handler);
  virtual ~MetricsListener() = default;
  [[nodiscard]] virtual std::uint16_t port() const = 0;
  virtual void start() = 0;
  virtual void stop() = 0;
};

}  // namespace cairn::control::server
