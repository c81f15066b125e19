// `cairn-agent task run KIND [--args-json JSON] [--timeout S]`: runs one task kind on this
// node, by hand, through the same code as the service (tasks::run_task) with the node's
// configuration (its exec allowlist applies). SIGINT/SIGTERM stop it as a cancel would.
#include <signal.h>
#include <sys/signalfd.h>

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/tasks/kind.hpp"
#include "common/fd.hpp"

namespace cairn::agent::cli {
namespace {

// The sysexits code of a task that did not succeed (DESIGN "The agent's command line").
Errc errc_for(const tasks::TaskResult& r) {
  if (!r.reason) return Errc::temporary;  // cancelled (interrupted)
  switch (*r.reason) {
    case protocol::FailureReason::invalid_args: return Errc::data;
    case protocol::FailureReason::timeout: return Errc::temporary;
    case protocol::FailureReason::internal: return Errc::internal;
    default: return Errc::unavailable;  // the command failed (exit_nonzero, killed)
  }
}

}  // namespace

CommandOutcome run_task_command(const GlobalOptions& global, const std::string& kind, const Json& args,
                                std::int64_t timeout_s) {
  CommandOutcome out{.stage = "config"};
  auto config = load_agent_config(global);
  if (!config) return out.error = config.error(), out;
  out.stage = "task." + kind;
  // Ctrl-C / SIGTERM as the task's cancel fd: the process group is stopped, not orphaned.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  UniqueFd stop(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  const tasks::TaskContext ctx{.root = config->root, .clock = SystemClock::instance(),
                               .timeout = std::chrono::seconds(std::max<std::int64_t>(0, timeout_s)),
                               .cancel_fd = stop.get()};
  const tasks::KindSettings settings{.exec_allowlist = config->exec_allowlist,
                                     .allow_root_services = config->allow_root_services,
                                     .services_dir = config->services_dir};
  auto r = tasks::run_task(kind, args, settings, ctx);
  if (r.ok() && r.after_complete) {  // by hand there is no completion to wait for (reboot)
    if (auto ok = r.after_complete(); !ok) return out.error = ok.error(), out;
  }
  out.details = {{"kind", kind}, {"outcome", r.outcome}, {"exit_code", nullptr}, {"reason", nullptr},
                 {"error", r.error}, {"output", r.output}, {"output_truncated", r.output_truncated},
                 {"output_bytes", r.output_bytes}, {"duration_ms", r.duration_ms}};
  if (r.exit_code) out.details["exit_code"] = *r.exit_code;
  if (r.reason) out.details["reason"] = std::string(protocol::failure_reason_name(*r.reason));
  out.human = r.output;
  if (r.output_truncated) {
    out.human = "[... " + std::to_string(r.output_bytes - static_cast<std::int64_t>(r.output.size())) +
                " bytes of output cut; the last " + std::to_string(r.output.size()) + " follow ...]\n" + out.human;
  }
  if (!r.ok()) {
    std::string message = kind + " " + r.outcome;
    if (r.reason) message += " (" + std::string(protocol::failure_reason_name(*r.reason)) + ")";
    message += ": " + r.error;
    out.error = Error{errc_for(r), message, r.reason == protocol::FailureReason::invalid_args ? "check the task's arguments" : ""};
  }
  return out;
}

void add_task(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* task = app.add_subcommand("task", "run a task kind on this node by hand (debugging)");
  task->require_subcommand(1);
  auto* run = task->add_subcommand("run", "run KIND with --args-json, as the service would");
  auto kind = std::make_shared<std::string>();
  auto args_json = std::make_shared<std::string>("{}");
  auto timeout_s = std::make_shared<std::int64_t>(0);
  run->add_option("kind", *kind, "task kind: " + [] {
    std::string k;
    for (const auto& n : tasks::kind_names()) k += (k.empty() ? "" : ", ") + n;
    return k;
  }())->required();
  run->add_option("--args-json", *args_json, "the task's arguments as one JSON object");
  run->add_option("--timeout", *timeout_s, "seconds before the task is stopped (0: the kind's default)");
  run->callback([&global, &exit_code, kind, args_json, timeout_s] {
    exit_code = run_command("task run", global.json, [&]() -> CommandOutcome {
      auto args = parse_json(*args_json, "--args-json");
      if (!args) {
        CommandOutcome out{.stage = "args"};
        out.error = Error{Errc::usage, args.error().message, R"(e.g. --args-json '{"argv": ["uname", "-a"]}')"};
        return out;
      }
      return run_task_command(global, *kind, *args, *timeout_s);
    });
  });
}

}  // namespace cairn::agent::cli
