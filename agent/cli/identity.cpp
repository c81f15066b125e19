// `cairn-agent identity [--explain]`: runs the identity cascade (identity/cascade.hpp) and
// prints who this node is; --explain lists every source with its outcome, reason and time,
// and notes what the evidence ignored and which hinted cloud did not answer and why.
// The one state it may write is the local identity.json, created once when no other source
// answers (DESIGN.md, "Boot flow" step 2), so that the id it prints is the one boot will use.
#include <cstdio>
#include <string>

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "common/http.hpp"
#include "identity/cascade.hpp"

namespace cairn::agent::cli {
namespace {

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

std::string ms_text(std::chrono::microseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f ms", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

std::string pad(std::string s, std::size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

std::string human_identity(const identity::Identity& id) {
  std::string zone = or_dash(id.region);
  if (!id.zone.empty()) zone += " / " + id.zone;
  return "id:        " + id.uuid.str() + "\n" +
         "source:    " + id.source + "\n" +
         "platform:  " + or_dash(id.platform) + "\n" +
         "instance:  " + or_dash(id.instance_id) + "\n" +
         "region:    " + zone + "\n" +
         "type:      " + or_dash(id.instance_type) + "\n" +
         "hostname:  " + or_dash(id.hostname) + "\n";
}

std::string human_attempts(const identity::Discovery& d) {
  std::string out = "\n" + pad("SOURCE", 14) + pad("OUTCOME", 10) + pad("TIME", 11) + "REASON\n";
  for (const auto& a : d.attempts) {
    out += pad(a.source, 14) + pad(std::string(identity::outcome_name(a.outcome)), 10) +
           pad(ms_text(a.duration), 11) + a.reason + "\n";
  }
  std::string clouds;
  for (const auto& c : d.hint.clouds) clouds += (clouds.empty() ? "" : ", ") + c;
  out += "DMI hint: " + (clouds.empty() ? std::string("no cloud") : clouds) +
         (d.hint.dmi.sys_vendor.empty() ? "" : " (sys_vendor '" + d.hint.dmi.sys_vendor + "')") +
         "\n";
  for (const auto& note : d.hint.notes) out += "note: " + note + "\n";
  for (const auto& note : d.notes) out += "note: " + note + "\n";
  out += "total: " + ms_text(d.total) + "\n";
  return out;
}

}  // namespace

void add_identity(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "identity", "discover who this node is: kernel cmdline, fw-cfg, cloud metadata, DMI, local");
  cmd->fallthrough();  // the global options (--json, --root, ...) may follow the name too
  auto explain = std::make_shared<bool>(false);
  cmd->add_flag("--explain", *explain,
                "list every source tried: answered, skipped or failed, why, and its time");
  cmd->callback([&global, &exit_code, explain] {
    exit_code = run_command("identity", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) {
        out.error = config.error();
        return out;
      }
      out.stage = "identity";
      auto http = make_http_client();
      const auto discovery = identity::discover(config->identity, *http);
      out.details = identity::discovery_to_json(discovery);
      if (discovery.identity) out.human = human_identity(*discovery.identity);
      if (*explain) out.human += human_attempts(discovery);
      if (!discovery.identity) out.error = discovery.error;
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
