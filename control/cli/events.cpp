// `cairn-control events [--node ID] [--since T] [--follow]`: node events (the agents' and
// control's own, e.g. node.unreachable, enroll.node_exists), oldest first, through the admin
// API. --follow then polls with the cursor of the last event seen (after=SEQ): every event
// stored later is printed once, in the order stored, none skipped.
#include <algorithm>
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
  bool follow = false;
  std::string poll = "1s";
};

std::vector<std::string> event_row(const Json& e) {
  return {cell(e, "received_at"), cell(e, "node"), cell(e, "severity"), cell(e, "kind"), cell(e, "message")};
}

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
  auto poll = parse_duration(o.poll, "--poll");
  if (!poll) return fail(poll.error());
  if (*poll < std::chrono::milliseconds(10)) return fail(Errc::usage, "--poll must be at least 10ms");
  auto answer = admin_call(admin, "GET", path);
  if (!answer) return fail(answer.error());
  const bool has_events = answer->contains("events") && (*answer)["events"].is_array();
  if (!o.follow) {
    if (admin.json) {
      std::cout << dump_json(*answer, 2) << "\n";
      return {};
    }
    std::vector<std::vector<std::string>> rows;
    if (has_events) {
      for (const auto& e : (*answer)["events"]) rows.push_back(event_row(e));
    }
    print_table({"RECEIVED", "NODE", "SEVERITY", "KIND", "MESSAGE"}, rows);
    return {};
  }
  // Following: one line per event (one JSON object per line with --json), flushed at once.
  auto print = [&](const Json& events) {
    for (const auto& e : events) {
      if (admin.json) {
        std::cout << dump_json(e) << "\n";
      } else {
        const auto row = event_row(e);
        std::cout << row[0] << "  " << row[1] << "  " << row[2] << "  " << row[3] << "  " << row[4] << "\n";
      }
    }
    std::cout.flush();
  };
  if (has_events) print((*answer)["events"]);
  std::int64_t cursor = answer->value("cursor", std::int64_t{0});
  const Clock& clock = SystemClock::instance();
  for (;;) {
    clock.sleep_until(clock.monotonic() + *poll);
    auto next = admin_call(admin, "GET", path + "&after=" + std::to_string(cursor));
    if (!next) return fail(next.error());
    if (next->contains("events") && (*next)["events"].is_array()) print((*next)["events"]);
    cursor = std::max(cursor, next->value("cursor", cursor));
  }
}

}  // namespace

void add_events(CLI::App& app, int& exit_code) {
  auto admin = std::make_shared<AdminOptions>();
  auto options = std::make_shared<EventsOptions>();
  auto* cmd = app.add_subcommand("events", "List node events (the newest --limit, oldest first)");
  add_admin_options(*cmd, *admin);
  cmd->add_option("--node", options->node, "Only this node (UUID)");
  cmd->add_option("--since", options->since, "Only events received since: an RFC 3339 time, or how long ago (15m, 2d)");
  cmd->add_option("--limit", options->limit, "At most this many (the newest; per poll when following)")
      ->capture_default_str();
  cmd->add_flag("--follow,-f", options->follow, "Keep printing events as they are stored (Ctrl-C ends)");
  cmd->add_option("--poll", options->poll, "How often --follow asks for new events")->capture_default_str();
  cmd->callback([admin, options, &exit_code] {
    if (auto ok = list_events(*admin, *options); !ok) {
      print_error("events", ok.error(), admin->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
