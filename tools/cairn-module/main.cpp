// cairn-module: build, sign, publish and check Cairn modules (issue 14).
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "tools/cairn-module/commands.hpp"

namespace cairn::module_tool {

void run(const std::string& command, bool json, int& exit_code, const std::function<Result<Outcome>()>& body) {
  Result<Outcome> out = body();
  if (json) {
    Json j = {{"command", command}, {"ok", out.has_value()}, {"error", nullptr},
              {"details", out ? out->details : Json::object()}};
    if (!out) {
      j["error"] = {{"code", std::string(errc_name(out.error().code))}, {"message", out.error().message},
                    {"hint", out.error().hint}};
    }
    std::cout << dump_json(j, 2) << std::endl;
  } else if (!out) {
    std::cerr << "cairn-module " << command << ": " << out.error().message << "\n";
    if (!out.error().hint.empty()) std::cerr << "  hint: " << out.error().hint << "\n";
  } else {
    std::cout << out->human << std::flush;
  }
  exit_code = out ? 0 : static_cast<int>(out.error().code);
}

}  // namespace cairn::module_tool

int main(int argc, char** argv) {
  CLI::App app{"cairn-module: pack, sign, push and verify Cairn modules"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CAIRN_VERSION);
  int exit_code = 0;
  cairn::module_tool::add_keygen(app, exit_code);
  cairn::module_tool::add_pack(app, exit_code);
  cairn::module_tool::add_sign(app, exit_code);
  cairn::module_tool::add_push(app, exit_code);
  cairn::module_tool::add_inspect(app, exit_code);
  cairn::module_tool::add_verify(app, exit_code);
  cairn::module_tool::add_digest(app, exit_code);
  cairn::module_tool::add_policy(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 64;  // EX_USAGE
  } catch (const std::exception& e) {
    std::cerr << "cairn-module: internal error: " << e.what() << "\n";
    return 70;  // EX_SOFTWARE
  }
  return exit_code;
}
