// The subcommands of cairn-module (issue 14), one file each. Every command prints for a
// person by default, one JSON object with --json, and exits with the sysexits code of its
// error (0 when ok), as cairn-agent does.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::module_tool {

struct Outcome {
  Json details = Json::object();
  std::string human{};  // printed on success (ends with a newline)
};

// Prints per the contract and stores the exit code.
void run(const std::string& command, bool json, int& exit_code, const std::function<Result<Outcome>()>& body);

void add_keygen(CLI::App& app, int& exit_code);   // keygen.cpp
void add_pack(CLI::App& app, int& exit_code);     // pack.cpp
void add_sign(CLI::App& app, int& exit_code);     // sign.cpp
void add_push(CLI::App& app, int& exit_code);     // push.cpp (push and pull)
void add_inspect(CLI::App& app, int& exit_code);  // inspect.cpp
void add_verify(CLI::App& app, int& exit_code);   // verify.cpp
void add_digest(CLI::App& app, int& exit_code);   // digest.cpp
void add_policy(CLI::App& app, int& exit_code);   // policy.cpp (h-modpolicy)

}  // namespace cairn::module_tool
