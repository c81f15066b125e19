// The subcommands of cairn-agent; each lives in its own file under agent/cli/.
#pragma once

#include <CLI/CLI.hpp>

#include "agent/cli/report.hpp"
#include "agent/config.hpp"
#include "common/json.hpp"

namespace cairn::agent::cli {

// Each adds its subcommand; on run it stores its exit code in exit_code.
void add_identity(CLI::App& app, const GlobalOptions& global, int& exit_code);  // identity.cpp
void add_enroll(CLI::App& app, const GlobalOptions& global, int& exit_code);    // enroll.cpp
void add_service(CLI::App& app, const GlobalOptions& global, int& exit_code);   // service.cpp
void add_status(CLI::App& app, const GlobalOptions& global, int& exit_code);    // status.cpp
void add_exec(CLI::App& app, const GlobalOptions& global, int& exit_code);      // exec.cpp (tasks)
void add_task(CLI::App& app, const GlobalOptions& global, int& exit_code);      // task.cpp (tasks)

// Runs one task kind locally (exec and task run share it; task.cpp).
CommandOutcome run_task_command(const GlobalOptions& global, const std::string& kind, const Json& args,
                                std::int64_t timeout_s);
// modules (issue 14)
void add_verify(CLI::App& app, const GlobalOptions& global, int& exit_code);   // verify.cpp
void add_attach(CLI::App& app, const GlobalOptions& global, int& exit_code);   // attach.cpp
void add_update(CLI::App& app, const GlobalOptions& global, int& exit_code);   // attach.cpp
void add_modules(CLI::App& app, const GlobalOptions& global, int& exit_code);  // modules.cpp (modules, detach)
void add_volume_setup(CLI::App& app, const GlobalOptions& global, int& exit_code);  // volume_setup.cpp (persist)
void add_persist(CLI::App& app, const GlobalOptions& global, int& exit_code);       // persist.cpp (persist)
void add_boot(CLI::App& app, const GlobalOptions& global, int& exit_code);          // boot.cpp (boot, issue 16)
void add_config(CLI::App& app, const GlobalOptions& global, int& exit_code);        // config_explain.cpp (boot)

}  // namespace cairn::agent::cli
