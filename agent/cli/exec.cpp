// `cairn-agent exec [--env K=V] [--cwd DIR] [--timeout S] -- ARGS`: the exec task kind run by
// hand, the same code path as the service (see task.cpp).
#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"

namespace cairn::agent::cli {

void add_exec(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("exec", "run a command as an exec task would (debugging): exec -- ARGS");
  auto argv = std::make_shared<std::vector<std::string>>();
  auto env = std::make_shared<std::vector<std::string>>();
  auto cwd = std::make_shared<std::string>();
  auto timeout_s = std::make_shared<std::int64_t>(0);
  cmd->add_option("--env", *env, "K=V for the command's environment (repeatable)");
  cmd->add_option("--cwd", *cwd, "working directory (a host path, under --root)");
  cmd->add_option("--timeout", *timeout_s, "seconds before the process group is stopped");
  cmd->add_option("args", *argv, "the command and its arguments, after --")->required();
  cmd->callback([&global, &exit_code, argv, env, cwd, timeout_s] {
    exit_code = run_command("exec", global.json, [&]() -> CommandOutcome {
      Json args{{"argv", *argv}};
      Json e = Json::object();
      for (const auto& kv : *env) {
        const auto eq = kv.find('=');
        if (eq == std::string::npos || eq == 0) {
          CommandOutcome out{.stage = "args"};
          out.error = Error{Errc::usage, "--env '" + kv + "': expected K=V", "e.g. --env LANG=C"};
          return out;
        }
        e[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
      args["env"] = e;
      if (!cwd->empty()) args["cwd"] = *cwd;
      return run_task_command(global, "exec", args, *timeout_s);
    });
  });
}

}  // namespace cairn::agent::cli
