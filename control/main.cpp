// cairn-control: the control service and its operator CLI.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "control/cli/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"cairn-control: the Cairn control service and its operator CLI"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CAIRN_VERSION);
  int exit_code = 0;
  cairn::control::cli::add_init(app, exit_code);
  cairn::control::cli::add_serve(app, exit_code);
  cairn::control::cli::add_token(app, exit_code);
  cairn::control::cli::add_node(app, exit_code);
  cairn::control::cli::add_events(app, exit_code);
  cairn::control::cli::add_admin(app, exit_code);
  cairn::control::cli::add_task(app, exit_code);
  cairn::control::cli::add_module(app, exit_code);  // modules (h-modctl)
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 64;  // EX_USAGE
  } catch (const std::exception& e) {
    std::cerr << "cairn-control: internal error: " << e.what() << "\n";
    return 70;  // EX_SOFTWARE
  }
  return exit_code;
}
