// `cairn-agent status`: identity, enrollment, certificate expiry and the last heartbeat, from
// the files on the persist volume. Read-only: runs no discovery, contacts nothing.
#include "agent/cli/status.hpp"
#include "agent/modules/store.hpp"  // modules (h-modctl)

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/enroll/credentials.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/runtime/status_file.hpp"
#include "common/fs.hpp"
#include "common/time.hpp"

namespace cairn::agent::cli {
namespace {

// A string field of a file the node wrote; "?" when absent or of another type (a damaged
// file must not stop `status` from showing the rest).
std::string field(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "?";
}

std::string ago(Clock::WallTime t, Clock::WallTime now) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(now - t).count();
  return format_rfc3339(t) + " (" + std::to_string(s) + " s ago)";
}

}  // namespace

CertificateReport certificate_report(const CertInfo& cert, Clock::WallTime now) {
  CertificateReport r;
  const bool expired = now >= cert.not_after;
  r.details = {{"serial", cert.serial_hex}, {"subject", cert.subject_cn},
               {"not_before", format_rfc3339(cert.not_before)}, {"not_after", format_rfc3339(cert.not_after)},
               {"expired", expired}};
  if (!expired) {
    const auto left = std::chrono::duration_cast<std::chrono::hours>(cert.not_after - now).count();
    r.human = "certificate: " + cert.serial_hex + ", valid until " + format_rfc3339(cert.not_after) + " (" +
              std::to_string(left) + " h left)\n";
    return r;
  }
  const auto hint = reenrollment_hint(cert.subject_cn);
  r.details["action"] = hint;
  r.human = "certificate: " + cert.serial_hex + ", EXPIRED at " + format_rfc3339(cert.not_after) +
            ": control refuses it\n             " + hint + "\n";
  return r;
}

void add_status(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("status", "show identity, enrollment, certificate and last heartbeat");
  cmd->callback([&global, &exit_code] {
    exit_code = run_command("status", global.json, [&]() -> CommandOutcome {
      CommandOutcome out{.stage = "config"};
      auto config = load_agent_config(global);
      if (!config) return out.error = config.error(), out;
      const auto now = SystemClock::instance().now();
      out.stage = "status";
      std::string human;

      auto enrollment_text = read_file_if_exists(config->state_dir() / "enrollment.json", 64 * 1024);
      Json enrollment = nullptr;
      if (enrollment_text && *enrollment_text) enrollment = parse_json(**enrollment_text, "enrollment.json").value_or(nullptr);
      out.details["enrollment"] = enrollment;
      if (enrollment.is_object()) {
        human += "node:        " + field(enrollment, "node_id") + "\n";
        if (auto id = enrollment.find("identity"); id != enrollment.end() && id->is_object()) {
          human += "identity:    source " + field(*id, "source") + ", platform " + field(*id, "platform") + "\n";
        }
        human += "control:     " + field(enrollment, "control_url") + "\n";
        human += "enrolled at: " + field(enrollment, "enrolled_at") + "\n";
      } else {
        human += "node:        not enrolled (run `cairn-agent enroll`)\n";
      }

      CredentialStore store(config->state_dir());
      auto creds = store.load();
      if (!creds) return out.error = creds.error(), out;
      if (*creds) {
        auto report = certificate_report((*creds)->cert, now);
        out.details["certificate"] = std::move(report.details);
        human += report.human;
      } else {
        out.details["certificate"] = nullptr;
      }

      auto status = read_status(config->state_dir());
      if (!status) return out.error = status.error(), out;
      if (*status) {
        const auto& s = **status;
        out.details["service"] = to_json(s);
        human += "heartbeat:   ";
        if (s.last_ok) human += "last ok " + ago(*s.last_ok, now) + ", " + std::to_string(s.heartbeats_acked) + " acknowledged";
        else human += "never succeeded";
        if (!s.last_error.empty()) human += "; failing (" + std::to_string(s.consecutive_failures) + "): " + s.last_error;
        human += "\n";
        if (s.rotation_failures > 0) {
          human += "rotation:    failing " + std::to_string(s.rotation_failures) + " times in a row" +
                   (s.rotation_failing_event_id.empty() ? "" : " (event " + s.rotation_failing_event_id + ")") + "\n";
        }
      } else {
        out.details["service"] = nullptr;
        human += "heartbeat:   the service has not run yet\n";
      }
      // modules (h-modctl): the attached count and whether the kernel checks their reads.
      modules::ModuleStore module_store(config->state_dir() / "modules");
      if (auto attached = module_store.load_attached(); attached && !attached->empty()) {
        std::string unavailable;
        std::size_t enforced = 0;
        for (const auto& a : *attached) {
          if (a.verity.starts_with("unavailable")) {
            if (unavailable.empty()) unavailable = a.verity.substr(std::string_view("unavailable").size());
          } else if (a.verity == "enabled") {
            ++enforced;
          }
        }
        while (!unavailable.empty() && (unavailable.front() == ':' || unavailable.front() == ' ')) unavailable.erase(0, 1);
        out.details["modules"] = {{"attached", attached->size()}, {"verity_enabled", enforced},
                                  {"verity_unavailable", unavailable.empty() ? Json(nullptr) : Json(unavailable)}};
        human += "modules:     " + std::to_string(attached->size()) + " attached, fs-verity enforced on " + std::to_string(enforced) + "\n";
        if (!unavailable.empty()) {
          human += "fs-verity:   unavailable (" + unavailable + "): images are verified when attached, later reads are not checked by the kernel\n";
        }
      } else {
        out.details["modules"] = {{"attached", 0}, {"verity_enabled", 0}, {"verity_unavailable", nullptr}};
      }
      out.human = human;
      return out;
    });
  });
}

}  // namespace cairn::agent::cli
