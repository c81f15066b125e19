// `cairn-control events [--node ID] [--since T]`: node events (the agents' and control's
// own, e.g. node.unreachable, enroll.node_exists), oldest first, through the admin API.
#include <iostream>
#include <memory>

#include "common/clock.hpp"
#include "common/uuid.hpp"
#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"
#include "control/cli/parse.hpp"

namespace cairn::control::cli {
namespace {

struct EventsOptions {
  std::string node;
  std::string since;
  int limit = 1000;
};

Status list_events(const AdminOptions& admin, const EventsOptions& o) {
  std::string path = "/v1/admin/events?limit=" + std::to_string(o.limit);
  if (o.limit < 1) return fail(Errc::usage, "--limit must be at least 1");
  if (!o.node.empty()) {
    auto id = parse_uuid(o.node);
    if (!id) return fail(Errc::usage, "--node: " + id.error().message, "pass the node's UUID (see 'node list')");
    path += "&node=" + id->str();
  }
  if (!o.since.empty()) {
    auto since = parse_since(o.since, SystemClock::instance().now(), "--since");
    if (!since) return fail(since.error());
    path += "&since_ms=" + std::to_string(std::max<std::int64_t>(0, *since));
  }
  auto answer = admin_call(admin, "GET", path);
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("events") && (*answer)["events"].is_array()) {
    for (const auto& e : (*answer)["events"]) {
      rows.push_back({cell(e, "received_at"), cell(e, "node"), cell(e, "severity"), cell(e, "kind"),
                      cell(e, "message")});
    }
  }
  print_table({"RECEIVED", "NODE", "SEVERITY", "KIND", "MESSAGE"}, rows);
  return {};
}

}  // namespace

void add_events(CLI::App& app, int& exit_code) {
  auto admin = std::make_shared<AdminOptions>();
  auto options = std::make_shared<EventsOptions>();
  auto* cmd = app.add_subcommand("events", "List node events (the newest --limit, oldest first)");
  add_admin_options(*cmd, *admin);
  cmd->add_option("--node", options->node, "Only this node (UUID)");
  cmd->add_option("--since", options->since, "Only events received since: an RFC 3339 time, or how long ago (15m, 2d)");
  cmd->add_option("--limit", options->limit, "At most this many (the newest)")->capture_default_str();
  cmd->callback([admin, options, &exit_code] {
    if (auto ok = list_events(*admin, *options); !ok) {
      print_error("events", ok.error(), admin->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
