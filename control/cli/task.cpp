// `cairn-control task submit|list|show|cancel`: the task queue through the admin API
// (issue 13). Tables by default, --json for scripts.
#include <cmath>
#include <iostream>
#include <memory>
#include <sstream>

#include "common/fs.hpp"
#include "common/uuid.hpp"
#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"
#include "control/cli/parse.hpp"

namespace cairn::control::cli {
namespace {

struct SubmitOptions {
  std::string kind;
  std::string node;
  std::string selector;  // k=v,k2=v2
  std::vector<std::string> capabilities;
  double min_cpu = 0;  // CPUs (0.5 = half a CPU)
  std::string min_mem;
  std::string min_disk;
  std::string timeout;
  int max_attempts = 0;  // 0: the service's default
  std::string serial_key;
  std::string idempotency_key;
  std::string args_json;
  std::vector<std::string> args;  // after --: the argv of an exec task
  std::string batch;              // --batch FILE.json: many submissions at once
};

// A batch file: a JSON array of submissions (the bodies of POST /v1/admin/tasks), or an
// object {"tasks": [...]}. Sent in requests of at most kBatchTasks tasks and kBatchBytes
// (the server takes 1 MiB bodies); each request is one transaction. Give each task an
// idempotency key and a failed run can simply be run again.
constexpr std::size_t kBatchTasks = 1000;
constexpr std::size_t kBatchBytes = 768 * 1024;
constexpr std::size_t kBatchFileMax = 256 * 1024 * 1024;

struct ListOptions {
  std::string state;
  std::string node;
  int limit = 1000;
};

void print_json_or(const AdminOptions& admin, const Json& answer, const std::string& human) {
  if (admin.json) {
    std::cout << dump_json(answer, 2) << "\n";
  } else {
    std::cout << human << "\n";
  }
}

Result<Json> submission(const SubmitOptions& o) {
  Json body = {{"kind", o.kind}};
  Json args = Json::object();
  if (!o.args_json.empty()) {
    auto parsed = parse_json(o.args_json, "--args-json");
    if (!parsed) return fail(Errc::usage, parsed.error().message, "pass a JSON object, e.g. --args-json '{\"name\":\"web\"}'");
    if (!parsed->is_object()) return fail(Errc::usage, "--args-json: expected a JSON object");
    args = std::move(*parsed);
  }
  if (!o.args.empty()) {
    if (o.kind != "exec") {
      return fail(Errc::usage, "arguments after -- are the argv of an exec task; a " + o.kind + " task takes --args-json");
    }
    args["argv"] = o.args;
  }
  body["args"] = std::move(args);
  if (!o.node.empty() && !o.selector.empty()) return fail(Errc::usage, "--node and --selector: give one, not both");
  if (!o.node.empty()) {
    auto id = parse_uuid(o.node);
    if (!id) return fail(Errc::usage, "--node: " + id.error().message, "pass the node's UUID (see 'node list')");
    body["node"] = id->str();
  }
  if (!o.selector.empty()) {
    Json sel = Json::object();
    std::stringstream in(o.selector);
    std::string item;
    while (std::getline(in, item, ',')) {
      const auto eq = item.find('=');
      if (item.empty() || eq == std::string::npos || eq == 0) {
        return fail(Errc::usage, "--selector: '" + item + "' is not key=value", "e.g. --selector zone=a,role=db");
      }
      sel[item.substr(0, eq)] = item.substr(eq + 1);
    }
    body["selector"] = std::move(sel);
  }
  if (!o.capabilities.empty()) body["capabilities"] = o.capabilities;
  Json min = Json::object();
  if (o.min_cpu < 0 || !std::isfinite(o.min_cpu)) return fail(Errc::usage, "--min-cpu: a number of CPUs, 0 or more");
  if (o.min_cpu > 0) min["cpu_millis"] = static_cast<std::int64_t>(std::llround(o.min_cpu * 1000));
  if (!o.min_mem.empty()) {
    auto v = parse_size(o.min_mem, "--min-mem");
    if (!v) return fail(v.error());
    min["mem_bytes"] = static_cast<std::int64_t>(*v);
  }
  if (!o.min_disk.empty()) {
    auto v = parse_size(o.min_disk, "--min-disk");
    if (!v) return fail(v.error());
    min["disk_bytes"] = static_cast<std::int64_t>(*v);
  }
  if (!min.empty()) body["min"] = std::move(min);
  if (!o.timeout.empty()) {
    auto t = parse_duration(o.timeout, "--timeout");
    if (!t) return fail(t.error());
    if (*t < std::chrono::seconds(1)) return fail(Errc::usage, "--timeout must be at least 1s");
    body["timeout_s"] = std::chrono::duration_cast<std::chrono::seconds>(*t).count();
  }
  if (o.max_attempts != 0) body["max_attempts"] = o.max_attempts;
  if (!o.serial_key.empty()) body["serial_key"] = o.serial_key;
  if (!o.idempotency_key.empty()) body["idempotency_key"] = o.idempotency_key;
  return body;
}

Status submit_batch(const AdminOptions& admin, const SubmitOptions& o) {
  if (!o.kind.empty() || !o.node.empty() || !o.selector.empty() || !o.args.empty() || !o.args_json.empty()) {
    return fail(Errc::usage, "--batch takes every field from the file; drop the other task options",
                "put kind, node, selector, args, ... in each object of " + o.batch);
  }
  auto text = read_file(o.batch, kBatchFileMax);
  if (!text) return fail(text.error());
  auto parsed = parse_json(*text, o.batch);
  if (!parsed) return fail(Errc::data, parsed.error().message, "the file must hold JSON: [{\"kind\": \"exec\", ...}]");
  const Json* items = &*parsed;
  if (parsed->is_object()) {
    auto it = parsed->find("tasks");
    if (it == parsed->end()) return fail(Errc::data, o.batch + ": an object without \"tasks\"", "give [{...}] or {\"tasks\": [{...}]}");
    items = &*it;
  }
  if (!items->is_array()) return fail(Errc::data, o.batch + ": expected an array of task submissions");
  Json tasks = Json::array();
  std::int64_t created = 0;
  std::size_t sent = 0;
  auto flush = [&](Json& chunk) -> Status {
    if (chunk.empty()) return {};
    Json body = {{"tasks", std::move(chunk)}};
    chunk = Json::array();
    auto answer = admin_call(admin, "POST", "/v1/admin/tasks/batch", &body);
    if (!answer) {
      return fail(answer.error().with_context(o.batch + ": after " + std::to_string(sent) + " tasks were taken"));
    }
    created += answer->value("created", std::int64_t{0});
    if (auto it = answer->find("tasks"); it != answer->end() && it->is_array()) {
      for (auto& t : *it) tasks.push_back(std::move(t));
      sent += it->size();
    }
    return {};
  };
  Json chunk = Json::array();
  std::size_t chunk_bytes = 0;
  for (const auto& item : *items) {
    const std::size_t size = dump_json(item).size() + 1;
    if (!chunk.empty() && (chunk.size() >= kBatchTasks || chunk_bytes + size > kBatchBytes)) {
      if (auto ok = flush(chunk); !ok) return ok;
      chunk_bytes = 0;
    }
    chunk.push_back(item);
    chunk_bytes += size;
  }
  if (auto ok = flush(chunk); !ok) return ok;
  Json answer = {{"tasks", tasks}, {"created", created}};
  std::ostringstream human;
  human << created << " of " << tasks.size() << " tasks queued";
  if (static_cast<std::size_t>(created) < tasks.size()) {
    human << "; " << (tasks.size() - static_cast<std::size_t>(created))
          << " named an idempotency key already submitted (not submitted again)";
  }
  print_json_or(admin, answer, human.str());
  return {};
}

Status submit(const AdminOptions& admin, const SubmitOptions& o) {
  if (!o.batch.empty()) return submit_batch(admin, o);
  if (o.kind.empty()) return fail(Errc::usage, "--kind is required (or --batch FILE.json)");
  auto body = submission(o);
  if (!body) return fail(body.error());
  auto answer = admin_call(admin, "POST", "/v1/admin/tasks", &*body);
  if (!answer) return fail(answer.error());
  const bool created = answer->value("created", false);
  print_json_or(admin, *answer,
                created ? "task " + cell(*answer, "id") + " queued"
                        : "task " + cell(*answer, "id") + " already submitted with idempotency key " +
                              o.idempotency_key + " (state " + cell(*answer, "state") + "): not submitted again");
  return {};
}

Status list(const AdminOptions& admin, const ListOptions& o) {
  if (o.limit < 1) return fail(Errc::usage, "--limit must be at least 1");
  std::string path = "/v1/admin/tasks?limit=" + std::to_string(o.limit);
  if (!o.state.empty()) path += "&state=" + o.state;
  if (!o.node.empty()) {
    auto id = parse_uuid(o.node);
    if (!id) return fail(Errc::usage, "--node: " + id.error().message, "pass the node's UUID (see 'node list')");
    path += "&node=" + id->str();
  }
  auto answer = admin_call(admin, "GET", path);
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("tasks") && (*answer)["tasks"].is_array()) {
    for (const auto& t : (*answer)["tasks"]) {
      const std::string node = t.contains("leased_by") && t["leased_by"].is_string() ? cell(t, "leased_by") : cell(t, "node");
      std::string error = cell(t, "last_error");
      if (error.size() > 60) error = error.substr(0, 57) + "...";
      rows.push_back({cell(t, "id"), cell(t, "kind"), cell(t, "state"), node, cell(t, "attempts"),
                      cell(t, "created_at"), cell(t, "last_reason"), error});
    }
  }
  print_table({"ID", "KIND", "STATE", "NODE", "ATTEMPTS", "CREATED", "REASON", "LAST ERROR"}, rows);
  return {};
}

Status show(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "GET", "/v1/admin/tasks/" + id);
  if (!answer) return fail(answer.error());
  if (admin.json || !answer->is_object()) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::size_t width = 0;
  for (const auto& [k, v] : answer->items()) width = std::max(width, k.size());
  for (const auto& [k, v] : answer->items()) {
    if (v.is_structured() || k == "output") continue;
    std::cout << k << ":" << std::string(width - k.size() + 1, ' ') << cell(*answer, k) << "\n";
  }
  for (const char* k : {"args", "selector", "capabilities", "min"}) {
    if (answer->contains(k)) std::cout << k << ":" << std::string(width - std::string_view(k).size() + 1, ' ')
                                       << dump_json((*answer)[k]) << "\n";
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("attempts") && (*answer)["attempts"].is_array()) {
    for (const auto& a : (*answer)["attempts"]) {
      rows.push_back({cell(a, "attempt"), cell(a, "fence"), cell(a, "node"), cell(a, "leased_at"),
                      cell(a, "started_at"), cell(a, "finished_at"), cell(a, "outcome"), cell(a, "reason"),
                      cell(a, "exit_code"), cell(a, "error")});
    }
  }
  std::cout << "\nattempts:\n";
  print_table({"#", "FENCE", "NODE", "LEASED", "STARTED", "FINISHED", "OUTCOME", "REASON", "EXIT", "ERROR"}, rows);
  const std::string output = answer->contains("output") && (*answer)["output"].is_string()
                                 ? (*answer)["output"].get<std::string>()
                                 : std::string();
  std::cout << "\noutput" << (answer->value("output_truncated", false) ? " (truncated: the tail is kept)" : "")
            << ":\n"
            << output << (output.empty() || output.back() == '\n' ? "" : "\n");
  return {};
}

Status cancel(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "POST", "/v1/admin/tasks/" + id + "/cancel");
  if (!answer) return fail(answer.error());
  const std::string outcome = cell(*answer, "outcome");
  std::string human = "task " + id + ": ";
  if (outcome == "cancelled") human += "cancelled before it ran";
  else if (outcome == "stop_requested") human += "cancel requested: its node is told to stop on its next lease or heartbeat";
  else human += "already finished (" + cell(*answer, "state") + "), nothing to cancel";
  print_json_or(admin, *answer, human);
  return {};
}

}  // namespace

void add_task(CLI::App& app, int& exit_code) {
  auto* task = app.add_subcommand("task", "Tasks: submit work to nodes and follow it");
  task->require_subcommand(1);

  auto admin_submit = std::make_shared<AdminOptions>();
  auto so = std::make_shared<SubmitOptions>();
  auto* submit_cmd = task->add_subcommand(
      "submit", "Queue a task: cairn-control task submit --kind exec [--node ID | --selector k=v] -- ARGV...");
  add_admin_options(*submit_cmd, *admin_submit);
  submit_cmd->add_option("--kind", so->kind, "exec, service.install, service.remove, inventory or reboot");
  submit_cmd->add_option("--batch", so->batch,
                         "Submit every task of a JSON file: [{\"kind\", \"args\", \"node\", ...}] (one transaction "
                         "per request)");
  submit_cmd->add_option("--node", so->node, "Run on this node (UUID)");
  submit_cmd->add_option("--selector", so->selector, "Run on a node whose labels match: k=v,k2=v2");
  submit_cmd->add_option("--capability", so->capabilities, "A capability the node must have (repeatable)");
  submit_cmd->add_option("--min-cpu", so->min_cpu, "CPUs the task reserves (e.g. 0.5)");
  submit_cmd->add_option("--min-mem", so->min_mem, "Memory the task reserves (e.g. 512MiB)");
  submit_cmd->add_option("--min-disk", so->min_disk, "Disk the task reserves (e.g. 2GiB)");
  submit_cmd->add_option("--timeout", so->timeout, "Run time allowed (e.g. 10m; default 1h)");
  submit_cmd->add_option("--max-attempts", so->max_attempts, "Attempts before a transient failure is final (default 3)");
  submit_cmd->add_option("--serial-key", so->serial_key, "Tasks with the same key run one at a time, in order");
  submit_cmd->add_option("--idempotency-key", so->idempotency_key, "Submitting the same key again returns that task");
  submit_cmd->add_option("--args-json", so->args_json, "The kind's arguments as a JSON object");
  submit_cmd->add_option("ARGS", so->args, "After --: the argv of an exec task");
  on_run(submit_cmd, admin_submit, "task submit", exit_code, [admin_submit, so] { return submit(*admin_submit, *so); });

  auto admin_list = std::make_shared<AdminOptions>();
  auto lo = std::make_shared<ListOptions>();
  auto* list_cmd = task->add_subcommand("list", "List tasks, newest first");
  add_admin_options(*list_cmd, *admin_list);
  // --state names the state dir on every admin command, so the filter is --status.
  list_cmd->add_option("--status", lo->state,
                       "Only tasks in this state: queued, leased, running, succeeded, failed, dead, cancelled");
  list_cmd->add_option("--node", lo->node, "Only tasks addressed to or leased by this node");
  list_cmd->add_option("--limit", lo->limit, "At most this many")->capture_default_str();
  on_run(list_cmd, admin_list, "task list", exit_code, [admin_list, lo] { return list(*admin_list, *lo); });

  auto admin_show = std::make_shared<AdminOptions>();
  auto show_id = std::make_shared<std::string>();
  auto* show_cmd = task->add_subcommand("show", "Show a task: attempts, leaseholder, fence, timings, exit code, output");
  add_admin_options(*show_cmd, *admin_show);
  show_cmd->add_option("ID", *show_id, "Task UUID")->required();
  on_run(show_cmd, admin_show, "task show", exit_code, [admin_show, show_id] { return show(*admin_show, *show_id); });

  auto admin_cancel = std::make_shared<AdminOptions>();
  auto cancel_id = std::make_shared<std::string>();
  auto* cancel_cmd = task->add_subcommand("cancel", "Cancel a task (a running one is told to stop)");
  add_admin_options(*cancel_cmd, *admin_cancel);
  cancel_cmd->add_option("ID", *cancel_id, "Task UUID")->required();
  on_run(cancel_cmd, admin_cancel, "task cancel", exit_code,
         [admin_cancel, cancel_id] { return cancel(*admin_cancel, *cancel_id); });
}

}  // namespace cairn::control::cli
