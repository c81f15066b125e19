// Serialises work on one node id (enrollment, rotation) without a lock per id: the id picks
// one of a fixed set of mutexes, so two requests for the same id never interleave and the
// store and the authorisation cache always see them in the same order.
#pragma once

#include <array>
#include <functional>
#include <mutex>
#include <string_view>

namespace cairn::control {

class IdLocks {
 public:
  [[nodiscard]] std::unique_lock<std::mutex> lock(std::string_view id) {
    return std::unique_lock(stripes_[std::hash<std::string_view>{}(id) % stripes_.size()]);
  }

 private:
  std::array<std::mutex, 64> stripes_;
};

}  // namespace cairn::control
