#include "common/protocol/messages.hpp"

#include <cctype>

#include "common/crypto.hpp"
#include "common/protocol/json_fields.hpp"

namespace cairn::protocol {
namespace {

using detail::event_from;
using detail::event_json;
using detail::get_opt;

NodeIdentity identity_from(const Json& j) {
  NodeIdentity v;
  v.node_id = j.at("node_id").get<std::string>();
  get_opt(j, "source", v.source);
  get_opt(j, "platform", v.platform);
  get_opt(j, "instance_id", v.instance_id);
  get_opt(j, "region", v.region);
  get_opt(j, "zone", v.zone);
  get_opt(j, "instance_type", v.instance_type);
  get_opt(j, "hostname", v.hostname);
  return v;
}

Json modules_json(const std::vector<ModuleRef>& modules) {
  Json out = Json::array();
  for (const auto& m : modules) {
    Json j = {{"name", m.name}, {"digest", m.digest}, {"mounted", m.mounted}};
    if (m.required) j["required"] = true;  // absent means false: old peers read the same set
    out.push_back(std::move(j));
  }
  return out;
}

std::vector<ModuleRef> modules_from(const Json& j, const char* key) {
  std::vector<ModuleRef> out;
  if (auto it = j.find(key); it != j.end()) {
    for (const auto& m : *it) {
      ModuleRef r;
      r.name = m.at("name").get<std::string>();
      r.digest = m.at("digest").get<std::string>();
      get_opt(m, "mounted", r.mounted);
      get_opt(m, "required", r.required);
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace

Json to_json(const NodeIdentity& v) {
  return {{"node_id", v.node_id}, {"source", v.source}, {"platform", v.platform},
          {"instance_id", v.instance_id}, {"region", v.region}, {"zone", v.zone},
          {"instance_type", v.instance_type}, {"hostname", v.hostname}};
}

std::string enroll_proof_message(std::string_view node_id, std::string_view csr_pem) {
  std::string id(node_id);
  for (auto& c : id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return "cairn-enroll-proof-v1\n" + id + "\n" + sha256_hex(csr_pem);
}

Result<EnrollProof> make_enroll_proof(const EVP_PKEY* current_key, std::string_view cert_serial,
                                      std::string_view node_id, std::string_view csr_pem) {
  auto sig = sign_hex(current_key, enroll_proof_message(node_id, csr_pem));
  if (!sig) return fail(sig.error().with_context("enroll proof"));
  return EnrollProof{std::string(cert_serial), std::move(*sig)};
}

Json to_json(const EnrollRequest& v) {
  Json j = {{"identity", to_json(v.identity)}, {"csr", v.csr_pem}, {"labels", v.labels}};
  if (v.proof) j["proof"] = {{"cert_serial", v.proof->cert_serial}, {"signature", v.proof->signature_hex}};
  return j;
}

Json to_json(const CertificateResponse& v) {
  return {{"node_id", v.node_id}, {"certificate", v.certificate_pem}, {"ca_chain", v.ca_chain_pem},
          {"not_after", v.not_after}, {"heartbeat_interval_s", v.heartbeat_interval_s}};
}

Json to_json(const RotateRequest& v) { return {{"csr", v.csr_pem}}; }

Json to_json(const HeartbeatRequest& v) {
  Json events = Json::array();
  for (const auto& e : v.events) events.push_back(event_json(e));
  return {{"boot_id", v.boot_id},
          {"agent_version", v.agent_version},
          {"modules", modules_json(v.modules)},
          {"mount_state", v.mount_state},
          {"load", {v.load1, v.load5, v.load15}},
          {"cpu_count", v.cpu_count},
          {"memory", {{"total", v.mem_total_bytes}, {"available", v.mem_available_bytes}}},
          {"disk", {{"total", v.disk_total_bytes}, {"free", v.disk_free_bytes}}},
          {"uptime_s", v.uptime_s},
          {"cert_not_after", v.cert_not_after},
          {"labels", v.labels},
          {"events", events},
          {"capabilities", v.capabilities},
          {"running_tasks", v.running_tasks}};
}

Json to_json(const HeartbeatResponse& v) {
  Json j = {{"desired_modules", modules_json(v.desired_modules)}, {"server_time", v.server_time},
            {"next_interval_s", v.next_interval_s}, {"work_waiting", v.work_waiting},
            {"cancel_tasks", v.cancel_tasks}};
  if (!v.module_policy.is_null()) j["module_policy"] = v.module_policy;
  return j;
}

Json to_json(const ErrorBody& v) {
  return {{"error", {{"code", v.code}, {"message", v.message}, {"hint", v.hint}}}};
}

Result<NodeIdentity> node_identity_from_json(const Json& j) {
  try {
    return identity_from(j);
  } catch (const nlohmann::json::exception& e) {
    return fail(Errc::data, std::string("identity: ") + e.what());
  }
}

Result<EnrollRequest> decode_enroll_request(std::string_view body) {
  return decode_json<EnrollRequest>(body, "enroll request", [](const Json& j) {
    EnrollRequest v;
    v.identity = identity_from(j.at("identity"));
    v.csr_pem = j.at("csr").get<std::string>();
    get_opt(j, "labels", v.labels);
    if (auto it = j.find("proof"); it != j.end() && !it->is_null()) {
      v.proof = EnrollProof{it->at("cert_serial").get<std::string>(), it->at("signature").get<std::string>()};
    }
    return v;
  });
}

Result<CertificateResponse> decode_certificate_response(std::string_view body) {
  return decode_json<CertificateResponse>(body, "certificate response", [](const Json& j) {
    CertificateResponse v;
    v.node_id = j.at("node_id").get<std::string>();
    v.certificate_pem = j.at("certificate").get<std::string>();
    v.ca_chain_pem = j.at("ca_chain").get<std::string>();
    get_opt(j, "not_after", v.not_after);
    get_opt(j, "heartbeat_interval_s", v.heartbeat_interval_s);
    return v;
  });
}

Result<RotateRequest> decode_rotate_request(std::string_view body) {
  return decode_json<RotateRequest>(body, "rotate request", [](const Json& j) {
    return RotateRequest{j.at("csr").get<std::string>()};
  });
}

Result<HeartbeatRequest> decode_heartbeat_request(std::string_view body) {
  return decode_json<HeartbeatRequest>(body, "heartbeat body", [](const Json& j) {
    HeartbeatRequest v;
    v.boot_id = j.at("boot_id").get<std::string>();
    get_opt(j, "agent_version", v.agent_version);
    v.modules = modules_from(j, "modules");
    get_opt(j, "mount_state", v.mount_state);
    if (auto it = j.find("load"); it != j.end()) {
      const auto load = it->get<std::vector<double>>();
      if (load.size() > 0) v.load1 = load[0];
      if (load.size() > 1) v.load5 = load[1];
      if (load.size() > 2) v.load15 = load[2];
    }
    get_opt(j, "cpu_count", v.cpu_count);
    if (auto it = j.find("memory"); it != j.end()) {
      get_opt(*it, "total", v.mem_total_bytes);
      get_opt(*it, "available", v.mem_available_bytes);
    }
    if (auto it = j.find("disk"); it != j.end()) {
      get_opt(*it, "total", v.disk_total_bytes);
      get_opt(*it, "free", v.disk_free_bytes);
    }
    get_opt(j, "uptime_s", v.uptime_s);
    get_opt(j, "cert_not_after", v.cert_not_after);
    get_opt(j, "labels", v.labels);
    if (auto it = j.find("events"); it != j.end()) {
      for (const auto& e : *it) v.events.push_back(event_from(e));
    }
    get_opt(j, "capabilities", v.capabilities);
    get_opt(j, "running_tasks", v.running_tasks);
    return v;
  });
}

Result<HeartbeatResponse> decode_heartbeat_response(std::string_view body) {
  return decode_json<HeartbeatResponse>(body, "heartbeat response", [](const Json& j) {
    HeartbeatResponse v;
    v.desired_modules = modules_from(j, "desired_modules");
    get_opt(j, "server_time", v.server_time);
    get_opt(j, "next_interval_s", v.next_interval_s);
    get_opt(j, "work_waiting", v.work_waiting);
    get_opt(j, "cancel_tasks", v.cancel_tasks);
    if (auto it = j.find("module_policy"); it != j.end() && it->is_object()) v.module_policy = *it;
    return v;
  });
}

Result<ErrorBody> decode_error_body(std::string_view body) {
  return decode_json<ErrorBody>(body, "error body", [](const Json& j) {
    const auto& e = j.at("error");
    ErrorBody v;
    get_opt(e, "code", v.code);
    get_opt(e, "message", v.message);
    get_opt(e, "hint", v.hint);
    return v;
  });
}

}  // namespace cairn::protocol
