// `cairn-agent persist status | add-recovery | reseal`: the /persist volume for an operator.
// status is read-only (it reads headers and PCRs, changes nothing); add-recovery prints the
// recovery key once; reseal, after a PCR change, binds a new TPM key to the PCRs as they are
// now, authorized by the recovery key (read from stdin or --recovery-key-file).
#include <iostream>

#include "agent/cli/commands.hpp"
#include "agent/cli/report.hpp"
#include "agent/persist/host.hpp"
#include "agent/persist/runtime.hpp"
#include "agent/persist/token.hpp"
#include "common/fs.hpp"

namespace cairn::agent::cli {
namespace {

using namespace cairn::agent::persist;

std::string_view state_name(LuksHeader::State s) {
  switch (s) {
    case LuksHeader::State::none: return "none";
    case LuksHeader::State::luks2: return "luks2";
    case LuksHeader::State::unreadable: return "unreadable";
  }
  return "none";
}

Json token_json(const LuksToken& t) {
  Json j{{"id", t.id}, {"type", t.type}};
  if (t.type == kTpmTokenType) {
    auto d = decode_tpm_token(t);
    if (d) {
      j["keyslot"] = d->keyslot;
      j["pcrs"] = d->sealed.policy.pcrs;
      j["bank"] = d->sealed.policy.bank;
    } else {
      j["error"] = d.error().message;
    }
  } else if (t.type == kEscrowTokenType) {
    if (auto d = decode_escrow_token(t)) j["keyslot"] = d->keyslot;
  } else if (t.type == kRecoveryTokenType) {
    if (auto d = decode_recovery_token(t)) j["keyslot"] = *d;
  }
  return j;
}

CommandOutcome status(const GlobalOptions& global) {
  CommandOutcome out{.stage = "config"};
  auto config = load_agent_config(global);
  if (!config) return out.error = config.error(), out;
  auto rt = open_runtime(*config, false);
  if (!rt) return out.error = rt.error(), out;
  auto& r = **rt;
  out.stage = "persist.status";
  std::string human;
  Json d = Json::object();
  d["config"] = {{"disk", to_string(r.config.disk)}, {"min_size_mib", config->persist.min_size_mib},
                 {"pcrs", r.config.policy.pcrs}, {"bank", r.config.policy.bank},
                 {"key_source", std::string(key_source_name(r.config.key_source))}, {"tcti", config->persist.tcti}};
  human += "key source:  " + std::string(key_source_name(r.config.key_source)) + " (disk rule " +
           to_string(r.config.disk) + ", PCR policy " + pcr_list(r.config.policy.pcrs) + " " + r.config.policy.bank + ")\n";

  auto target = r.host->locate(r.config.disk, r.config.min_bytes);
  d["luks"] = nullptr;
  if (!target) {
    d["device"] = {{"error", target.error().message}};
    human += "device:      none: " + target.error().message + "\n";
  } else {
    d["device"] = {{"disk", target->disk.host_path.string()}, {"size_bytes", target->disk.size_bytes},
                   {"partition", target->partition_host_path.string()}, {"exists", target->exists}};
    if (!target->exists) {
      human += "device:      no cairn-persist partition yet; first boot would use " + target->disk.host_path.string() +
               " (" + std::to_string(target->disk.size_bytes / (1024 * 1024)) + " MiB)\n";
    } else {
      human += "device:      " + target->partition_host_path.string() + " on " + target->disk.host_path.string() + "\n";
      auto h = r.crypt->inspect(r.host->resolve(target->partition_host_path));
      if (!h) {
        d["luks"] = {{"error", h.error().message}};
        human += "LUKS:        " + h.error().message + "\n";
      } else {
        Json tokens = Json::array();
        for (const auto& t : h->tokens) tokens.push_back(token_json(t));
        d["luks"] = {{"state", std::string(state_name(h->state))}, {"uuid", h->uuid}, {"label", h->label},
                     {"keyslots", h->active_keyslots}, {"tokens", tokens}};
        if (!h->detail.empty()) d["luks"]["detail"] = h->detail;
        human += "LUKS:        " + std::string(state_name(h->state)) + (h->uuid.empty() ? "" : " " + h->uuid) +
                 (h->detail.empty() ? "" : " (" + h->detail + ")") + ", keyslots";
        for (int s : h->active_keyslots) human += " " + std::to_string(s);
        human += "\n";
        for (const auto& t : tokens) {
          human += "token:       " + t["type"].get<std::string>();
          if (t.contains("keyslot")) human += " -> keyslot " + std::to_string(t["keyslot"].get<int>());
          if (t.contains("pcrs")) human += ", PCR " + pcr_list(t["pcrs"].get<std::vector<int>>());
          if (t.contains("error")) human += ": DAMAGED: " + t["error"].get<std::string>();
          human += "\n";
        }
      }
    }
  }

  auto tpm = open_tpm(config->persist.tcti);
  if (tpm) {
    Json pcrs = Json::object();
    auto values = (*tpm)->read_pcrs(r.config.policy);
    if (values) {
      for (const auto& v : *values) pcrs[std::to_string(v.index)] = v.sha256_hex;
    }
    d["tpm"] = {{"available", true}, {"tcti", (*tpm)->describe()}, {"real", (*tpm)->is_real()}, {"pcrs", pcrs}};
    human += "TPM:         " + (*tpm)->describe() + ((*tpm)->is_real() ? " (hardware)" : " (not a hardware TPM)") + "\n";
    if (values) {
      for (const auto& v : *values) human += "PCR " + std::to_string(v.index) + ":       " + v.sha256_hex + " (sha256, now)\n";
    } else {
      human += "PCRs:        unreadable: " + values.error().message + "\n";
    }
  } else {
    d["tpm"] = {{"available", false}, {"tcti", config->persist.tcti}, {"real", false}, {"error", tpm.error().message}};
    human += "TPM:         none (" + tpm.error().message + ")\n";
  }
  const bool dm = device_mapper_available(config->root);
  auto mounted = is_mount_point(config->root, r.config.mount_point);
  d["device_mapper"] = dm;
  d["mounted"] = mounted.value_or(false);
  d["mount_point"] = r.config.mount_point.string();
  human += "mounted:     " + std::string(mounted.value_or(false) ? "yes, " : "no, ") + r.config.mount_point.string() +
           (dm ? "" : " (this kernel has no device-mapper: the volume cannot be activated here)") + "\n";
  auto pending = read_pending_event(config->root);
  // The event of an unlock failure stays on tmpfs until the service sends it (it starts only
  // once the volume is open): while mounted, it is a failure of this boot that was resolved.
  const bool resolved = mounted.value_or(false);
  d["unlock_failure"] = pending && *pending ? **pending : Json(nullptr);
  d["unlock_failure_resolved"] = pending && *pending ? Json(resolved) : Json(nullptr);
  if (pending && *pending && (*pending)->contains("message") && (**pending)["message"].is_string()) {
    human += std::string(resolved ? "unlock failed earlier this boot (resolved; sent to control when the service starts): "
                                  : "UNLOCK FAILED: ") +
             (**pending)["message"].get<std::string>() + "\n";
  }
  out.details = std::move(d);
  out.human = human;
  return out;
}

CommandOutcome add_recovery_cmd(const GlobalOptions& global) {
  CommandOutcome out{.stage = "config"};
  auto config = load_agent_config(global);
  if (!config) return out.error = config.error(), out;
  auto rt = open_runtime(*config, true);
  if (!rt) return out.error = rt.error(), out;
  out.stage = "persist.add_recovery";
  auto key = add_recovery((*rt)->config, (*rt)->deps);
  if (!key) return out.error = key.error(), out;
  out.details["recovery_key"] = key->display;  // shown once, here: it is stored nowhere else
  out.human = "recovery key (shown once; write it down and keep it off this machine):\n\n  " + key->display +
              "\n\nit opens the volume and authorizes `cairn-agent persist reseal`\n";
  return out;
}

CommandOutcome reseal_cmd(const GlobalOptions& global, const std::string& key_file) {
  CommandOutcome out{.stage = "config"};
  auto config = load_agent_config(global);
  if (!config) return out.error = config.error(), out;
  std::string typed;
  if (!key_file.empty()) {
    auto text = read_file(key_file, 4096);
    if (!text) return out.error = text.error(), out;
    typed = std::move(*text);
  } else {
    if (!global.json) std::cerr << "recovery key: " << std::flush;
    std::getline(std::cin, typed);
  }
  const Secret recovery = recovery_passphrase(typed);
  if (recovery.empty()) {
    out.error = Error{Errc::usage, "reseal: no recovery key given", "type it on stdin, or pass --recovery-key-file FILE"};
    return out;
  }
  auto rt = open_runtime(*config, true);
  if (!rt) return out.error = rt.error(), out;
  out.stage = "persist.reseal";
  auto slot = reseal((*rt)->config, (*rt)->deps, recovery);
  if (!slot) return out.error = slot.error(), out;
  // The unlock failure's event stays pending: the service sends it once the volume is open.
  out.details["keyslot"] = *slot;
  out.details["pcrs"] = (*rt)->config.policy.pcrs;
  out.human = "resealed: keyslot " + std::to_string(*slot) + " opens with the TPM at the current PCR " +
              pcr_list((*rt)->config.policy.pcrs) + "; run `cairn-agent volume-setup` to open the volume\n";
  return out;
}

}  // namespace

void add_persist(CLI::App& app, const GlobalOptions& global, int& exit_code) {
  auto* cmd = app.add_subcommand("persist", "the encrypted /persist volume: status, recovery key, reseal");
  cmd->require_subcommand(1);
  auto* st = cmd->add_subcommand("status", "device, LUKS state, tokens, PCR policy, TPM (read-only)");
  st->callback([&global, &exit_code] {
    exit_code = run_command("persist status", global.json, [&] { return status(global); });
  });
  auto* rec = cmd->add_subcommand("add-recovery", "add a recovery key to the volume (shown once)");
  rec->callback([&global, &exit_code] {
    exit_code = run_command("persist add-recovery", global.json, [&] { return add_recovery_cmd(global); });
  });
  auto key_file = std::make_shared<std::string>();
  auto* rs = cmd->add_subcommand("reseal", "after a PCR change: bind a new TPM key to the current PCRs (needs the recovery key)");
  rs->add_option("--recovery-key-file", *key_file, "read the recovery key from this file instead of stdin");
  rs->callback([&global, &exit_code, key_file] {
    exit_code = run_command("persist reseal", global.json, [&] { return reseal_cmd(global, *key_file); });
  });
}

}  // namespace cairn::agent::cli
