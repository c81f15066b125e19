#include "agent/persist/token.hpp"

#include "common/json.hpp"

namespace cairn::agent::persist {
namespace {

constexpr std::size_t kMaxTokenBlobChars = 8192;
constexpr std::string_view kDamagedHint =
    "the LUKS2 token is damaged; open the volume with the recovery key and run `cairn-agent persist reseal`";

Error damaged(const LuksToken& token, const std::string& what) {
  return Error{Errc::data, "LUKS2 token " + std::to_string(token.id) + " (" + token.type + "): " + what,
               std::string(kDamagedHint)};
}

Result<Json> parse_token(const LuksToken& token, std::string_view type) {
  auto j = parse_json(token.json, "LUKS2 token " + std::to_string(token.id));
  if (!j) return fail(damaged(token, j.error().message));
  if (!j->is_object()) return fail(damaged(token, "not a JSON object"));
  auto t = j->find("type");
  if (t == j->end() || !t->is_string() || t->get<std::string>() != type) {
    return fail(damaged(token, "type is not " + std::string(type)));
  }
  return j;
}

// The one keyslot a Cairn token names.
Result<int> one_keyslot(const LuksToken& token, const Json& j) {
  auto it = j.find("keyslots");
  if (it == j.end() || !it->is_array() || it->size() != 1 || !(*it)[0].is_string()) {
    return fail(damaged(token, "'keyslots' is not an array of one keyslot number"));
  }
  const auto s = (*it)[0].get<std::string>();
  if (s.empty() || s.size() > 2 || s.find_first_not_of("0123456789") != std::string::npos) {
    return fail(damaged(token, "keyslot '" + s + "' is not a number"));
  }
  return std::stoi(s);
}

Json base(std::string_view type, int keyslot) {
  return Json{{"type", type}, {"keyslots", Json::array({std::to_string(keyslot)})}};
}

}  // namespace

std::string encode_tpm_token(const TpmToken& token) {
  Json j = base(kTpmTokenType, token.keyslot);
  j["cairn-tpm2-blob"] = base64_encode(token.sealed.blob);
  j["cairn-tpm2-pcrs"] = token.sealed.policy.pcrs;
  j["cairn-tpm2-pcr-bank"] = token.sealed.policy.bank;
  return dump_json(j);
}

std::string encode_escrow_token(const EscrowToken& token) {
  Json j = base(kEscrowTokenType, token.keyslot);
  j["cairn-escrow-node"] = token.node_id;
  return dump_json(j);
}

std::string encode_recovery_token(int keyslot) { return dump_json(base(kRecoveryTokenType, keyslot)); }

Result<TpmToken> decode_tpm_token(const LuksToken& token) {
  auto j = parse_token(token, kTpmTokenType);
  if (!j) return fail(j.error());
  TpmToken out;
  auto slot = one_keyslot(token, *j);
  if (!slot) return fail(slot.error());
  out.keyslot = *slot;
  auto blob = j->find("cairn-tpm2-blob");
  if (blob == j->end() || !blob->is_string() || blob->get<std::string>().empty() ||
      blob->get<std::string>().size() > kMaxTokenBlobChars) {
    return fail(damaged(token, "'cairn-tpm2-blob' is missing or not a string of at most 8192 characters"));
  }
  auto bytes = base64_decode(blob->get<std::string>());
  if (!bytes) return fail(damaged(token, "'cairn-tpm2-blob': " + bytes.error().message));
  out.sealed.blob = std::move(*bytes);
  auto pcrs = j->find("cairn-tpm2-pcrs");
  if (pcrs == j->end() || !pcrs->is_array() || pcrs->empty() || pcrs->size() > 24) {
    return fail(damaged(token, "'cairn-tpm2-pcrs' is not an array of 1 to 24 PCR indices"));
  }
  out.sealed.policy.pcrs.clear();
  for (const auto& p : *pcrs) {
    if (!p.is_number_integer() || p.get<int>() < 0 || p.get<int>() > 23) {
      return fail(damaged(token, "'cairn-tpm2-pcrs' holds " + dump_json(p) + ", not a PCR index 0-23"));
    }
    out.sealed.policy.pcrs.push_back(p.get<int>());
  }
  auto bank = j->find("cairn-tpm2-pcr-bank");
  if (bank == j->end() || !bank->is_string()) return fail(damaged(token, "'cairn-tpm2-pcr-bank' is missing"));
  out.sealed.policy.bank = bank->get<std::string>();
  return out;
}

Result<EscrowToken> decode_escrow_token(const LuksToken& token) {
  auto j = parse_token(token, kEscrowTokenType);
  if (!j) return fail(j.error());
  EscrowToken out;
  auto slot = one_keyslot(token, *j);
  if (!slot) return fail(slot.error());
  out.keyslot = *slot;
  auto node = j->find("cairn-escrow-node");
  if (node == j->end() || !node->is_string()) return fail(damaged(token, "'cairn-escrow-node' is missing"));
  out.node_id = node->get<std::string>();
  return out;
}

Result<int> decode_recovery_token(const LuksToken& token) {
  auto j = parse_token(token, kRecoveryTokenType);
  if (!j) return fail(j.error());
  return one_keyslot(token, *j);
}

std::optional<LuksToken> find_token(const LuksHeader& header, std::string_view type) {
  for (const auto& t : header.tokens) {
    if (t.type == type) return t;
  }
  return std::nullopt;
}

}  // namespace cairn::agent::persist
