// Small helpers shared by the identity tests: run the cascade, find one source's attempt.
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "common/http.hpp"
#include "identity/cascade.hpp"

namespace cairn::test {

inline identity::Discovery run_cascade(const identity::Config& config) {
  auto http = make_http_client();
  return identity::discover(config, *http);
}

inline const identity::Attempt& attempt_of(const identity::Discovery& d, const std::string& source) {
  for (const auto& a : d.attempts) {
    if (a.source == source) return a;
  }
  FAIL("no attempt recorded for " << source);
  throw;  // unreachable: FAIL ends the test
}

// The response to request; the test stops here if there was none (a transport error), so
// no check is skipped because an answer is missing.
inline HttpResponse answer(HttpClient& http, const HttpRequest& request) {
  auto response = http.send(request);
  REQUIRE_MESSAGE(response.has_value(), request.method << " " << request.url << ": "
                                                       << response.error().message);
  return *response;
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace cairn::test
