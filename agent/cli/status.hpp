// What `cairn-agent status` says about the installed certificate, apart from the command so
// a unit test reads the words an operator reads.
#pragma once

#include <string>

#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/json.hpp"

namespace cairn::agent::cli {

struct CertificateReport {
  Json details;       // serial, subject, not_before, not_after, expired, and "action" when expired
  std::string human;  // one or more lines, each ending in '\n'
};

// An expired certificate names what the node needs: re-enrollment with a token bound to its
// id (reenrollment_hint), since control refuses a plain token for an id it already knows.
CertificateReport certificate_report(const CertInfo& cert, Clock::WallTime now);

}  // namespace cairn::agent::cli
