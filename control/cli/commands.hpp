// The subcommands of cairn-control; each lives in its own file under control/cli/.
#pragma once

#include <CLI/CLI.hpp>

namespace cairn::control::cli {

// Each adds its subcommand to app. The command stores its exit code in `exit_code`.
void add_init(CLI::App& app, int& exit_code);   // init.cpp
void add_serve(CLI::App& app, int& exit_code);  // serve.cpp
void add_token(CLI::App& app, int& exit_code);  // token.cpp: token create/list/revoke
void add_node(CLI::App& app, int& exit_code);   // node.cpp: node list/show/revoke/allow-reenroll
void add_events(CLI::App& app, int& exit_code); // events.cpp: events [--node] [--since]
void add_admin(CLI::App& app, int& exit_code);  // admin.cpp: admin create/list/revoke
void add_task(CLI::App& app, int& exit_code);   // task.cpp: task submit/list/show/cancel
void add_module(CLI::App& app, int& exit_code); // module.cpp: module add/list/assign/unassign (h-modctl)

}  // namespace cairn::control::cli
