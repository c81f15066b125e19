// An error for the wire: HTTP status + {"error": {code, message, hint}}. What every part of
// the service returns to the router; depends only on the protocol types.
#pragma once

#include <expected>
#include <string>
#include <utility>

#include "common/protocol/messages.hpp"

namespace cairn::control {

struct ApiError {
  int http_status = 500;
  protocol::ErrorBody body;
};
template <class T>
using ApiResult = std::expected<T, ApiError>;

inline ApiError api_error(int status, std::string code, std::string message, std::string hint = {}) {
  return ApiError{status, {std::move(code), std::move(message), std::move(hint)}};
}
[[nodiscard]] inline std::unexpected<ApiError> refuse(int status, std::string code, std::string message,
                                                      std::string hint = {}) {
  return std::unexpected(api_error(status, std::move(code), std::move(message), std::move(hint)));
}

}  // namespace cairn::control
