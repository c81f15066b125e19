// The one error type of Cairn: every fallible call returns Result<T>, holding T or an
// Error{code, message, hint}. Codes are sysexits.h values so a CLI exits with them as-is.
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace cairn {

// sysexits.h codes (DESIGN.md, "The agent's command line").
enum class Errc : int {
  usage = 64,        // EX_USAGE: the command line is wrong
  data = 65,         // EX_DATAERR: input data is malformed
  unavailable = 69,  // EX_UNAVAILABLE: a service (control, registry, metadata) did not answer
  internal = 70,     // EX_SOFTWARE: a bug of ours
  io = 74,           // EX_IOERR: reading or writing a file or device failed
  temporary = 75,    // EX_TEMPFAIL: try again later
  refused = 77,      // EX_NOPERM: auth, policy or signature refused
  config = 78,       // EX_CONFIG: the configuration is wrong or missing
};

std::string_view errc_name(Errc code);

struct Error {
  Errc code = Errc::internal;
  std::string message;  // what failed, on which input
  std::string hint;     // what to do about it; may be empty

  // Prefixes what the caller was doing: "enroll: " + message. Keeps code and hint.
  [[nodiscard]] Error with_context(std::string_view what) const;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

[[nodiscard]] inline std::unexpected<Error> fail(Errc code, std::string message,
                                                 std::string hint = {}) {
  return std::unexpected(Error{code, std::move(message), std::move(hint)});
}
[[nodiscard]] inline std::unexpected<Error> fail(Error error) {
  return std::unexpected(std::move(error));
}

}  // namespace cairn
