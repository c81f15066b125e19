// The contract of every cairn-agent command (DESIGN.md, "The agent's command line"):
// human output by default; --json prints one object {"command", "ok", "stage",
// "duration_ms", "error": {"code", "message", "hint"} | null, "details": {...}};
// the exit code is the sysexits value of the error (0 when ok).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::agent {

struct CommandOutcome {
  std::string stage;        // the stage reached or failed in ("identity", "enroll.csr", ...)
  Json details = Json::object();
  std::string human{};      // what a person reads on success (may be multi-line)
  std::optional<Error> error{};
};

// Runs body, times it, prints per the contract, returns the exit code.
int run_command(const std::string& command, bool json, const std::function<CommandOutcome()>& body);

}  // namespace cairn::agent
