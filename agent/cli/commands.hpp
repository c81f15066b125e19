// The subcommands of cairn-agent; each lives in its own file under agent/cli/.
#pragma once

#include <CLI/CLI.hpp>

#include "agent/config.hpp"

namespace cairn::agent::cli {

// Each adds its subcommand; on run it stores its exit code in exit_code.
void add_identity(CLI::App& app, const GlobalOptions& global, int& exit_code);  // identity.cpp
void add_enroll(CLI::App& app, const GlobalOptions& global, int& exit_code);    // enroll.cpp
void add_service(CLI::App& app, const GlobalOptions& global, int& exit_code);   // service.cpp
void add_status(CLI::App& app, const GlobalOptions& global, int& exit_code);    // status.cpp
// modules (issue 14)
void add_verify(CLI::App& app, const GlobalOptions& global, int& exit_code);   // verify.cpp
void add_attach(CLI::App& app, const GlobalOptions& global, int& exit_code);   // attach.cpp
void add_update(CLI::App& app, const GlobalOptions& global, int& exit_code);   // attach.cpp
void add_modules(CLI::App& app, const GlobalOptions& global, int& exit_code);  // modules.cpp (modules, detach)

}  // namespace cairn::agent::cli
