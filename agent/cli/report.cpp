#include "agent/cli/report.hpp"

#include <cstdio>
#include <iostream>

namespace cairn::agent {

int run_command(const std::string& command, bool json, const std::function<CommandOutcome()>& body) {
  const auto start = std::chrono::steady_clock::now();
  CommandOutcome out = body();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  if (json) {
    Json j = {{"command", command}, {"ok", !out.error}, {"stage", out.stage}, {"duration_ms", ms},
              {"error", nullptr}, {"details", out.details}};
    if (out.error) {
      j["error"] = {{"code", std::string(errc_name(out.error->code))}, {"message", out.error->message},
                    {"hint", out.error->hint}};
    }
    std::cout << dump_json(j, 2) << std::endl;
  } else if (out.error) {
    if (!out.human.empty()) std::cout << out.human << std::flush;
    std::cerr << "cairn-agent " << command << ": " << out.error->message << "\n";
    if (!out.error->hint.empty()) std::cerr << "  hint: " << out.error->hint << "\n";
  } else {
    std::cout << out.human << std::flush;
  }
  return out.error ? static_cast<int>(out.error->code) : 0;
}

}  // namespace cairn::agent
