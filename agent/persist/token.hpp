// The LUKS2 tokens Cairn writes, so the volume carries what it needs to open:
//   {"type": "cairn-tpm2", "keyslots": ["0"], "cairn-tpm2-blob": "<base64 sealed object>",
//    "cairn-tpm2-pcrs": [7], "cairn-tpm2-pcr-bank": "sha256"}
//   {"type": "cairn-escrow", "keyslots": ["0"], "cairn-escrow-node": "<node id>"}
//   {"type": "cairn-recovery", "keyslots": ["1"]}
// (LUKS2 on-disk format: a token is a JSON object with "type" and "keyslots", keyslot numbers
// as strings.) Parsing is strict: a damaged token is an error naming the field.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "agent/persist/luks.hpp"
#include "agent/persist/tpm.hpp"
#include "common/result.hpp"

namespace cairn::agent::persist {

inline constexpr std::string_view kTpmTokenType = "cairn-tpm2";
inline constexpr std::string_view kEscrowTokenType = "cairn-escrow";
inline constexpr std::string_view kRecoveryTokenType = "cairn-recovery";

struct TpmToken {
  int keyslot = 0;
  SealedKey sealed;
};
struct EscrowToken {
  int keyslot = 0;
  std::string node_id;
};

std::string encode_tpm_token(const TpmToken& token);
std::string encode_escrow_token(const EscrowToken& token);
std::string encode_recovery_token(int keyslot);

Result<TpmToken> decode_tpm_token(const LuksToken& token);
Result<EscrowToken> decode_escrow_token(const LuksToken& token);
Result<int> decode_recovery_token(const LuksToken& token);

// The first token of that type in the header, if any.
std::optional<LuksToken> find_token(const LuksHeader& header, std::string_view type);

}  // namespace cairn::agent::persist
