// cairn-agent: the on-node agent, and the operator's tool to run every stage by hand.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "agent/cli/commands.hpp"
#include "agent/config.hpp"

int main(int argc, char** argv) {
  CLI::App app{"cairn-agent: the Cairn node agent"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --root, ...) also after the subcommand
  app.set_version_flag("--version", CAIRN_VERSION);
  cairn::agent::GlobalOptions global;
  cairn::agent::add_global_options(app, global);
  int exit_code = 0;
  cairn::agent::cli::add_identity(app, global, exit_code);
  cairn::agent::cli::add_enroll(app, global, exit_code);
  cairn::agent::cli::add_service(app, global, exit_code);
  cairn::agent::cli::add_status(app, global, exit_code);
  cairn::agent::cli::add_exec(app, global, exit_code);
  cairn::agent::cli::add_task(app, global, exit_code);
  cairn::agent::cli::add_verify(app, global, exit_code);   // modules (issue 14)
  cairn::agent::cli::add_attach(app, global, exit_code);
  cairn::agent::cli::add_update(app, global, exit_code);
  cairn::agent::cli::add_modules(app, global, exit_code);
  cairn::agent::cli::add_volume_setup(app, global, exit_code);  // persist (issue 15)
  cairn::agent::cli::add_persist(app, global, exit_code);       // persist (issue 15)
  cairn::agent::cli::add_boot(app, global, exit_code);          // boot (issue 16)
  cairn::agent::cli::add_config(app, global, exit_code);        // boot (issue 16): config --explain
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 64;  // EX_USAGE
  } catch (const std::exception& e) {
    std::cerr << "cairn-agent: internal error: " << e.what() << "\n";
    return 70;  // EX_SOFTWARE
  }
  return exit_code;
}
