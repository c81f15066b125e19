// Tpm: seals the persist volume's 32-byte key to this machine's TPM2 under a PCR policy and
// unseals it at boot. The real backend (tpm.cpp, the only file speaking tss2/ESYS) reaches the
// TPM through a TCTI named by configuration: "device:/dev/tpmrm0" on a node,
// "swtpm:host=127.0.0.1,port=N" in tests. Fakes for the flow tests implement the same class.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/persist/secret.hpp"
#include "common/result.hpp"

namespace cairn::agent::persist {

// The PCRs a key is bound to: indices of one bank (sha256 only, as systemd-cryptenroll's
// default). The policy is TPM2_PolicyPCR over their values at sealing time.
struct PcrPolicy {
  std::vector<int> pcrs{7};
  std::string bank = "sha256";
};
std::string pcr_list(const std::vector<int>& pcrs);  // "7" or "0+7" (systemd's spelling)

struct PcrValue {
  int index = 0;
  std::string sha256_hex;
};

// What the TPM returns from sealing: the sealed object's public and private areas, marshalled
// with tss2-mu (TPM2B_PUBLIC then TPM2B_PRIVATE). Only the TPM that sealed it can load it.
struct SealedKey {
  std::string blob;  // binary
  PcrPolicy policy;
};

class Tpm {
 public:
  virtual ~Tpm() = default;
  // Seals secret (at most 128 bytes) to the storage primary key of the owner hierarchy under
  // a PolicyPCR of the PCRs' current values.
  virtual Result<SealedKey> seal(const Secret& secret, const PcrPolicy& policy) = 0;
  // Errc::refused when the PCRs differ from sealing time (the message names them) or the blob
  // was sealed by another TPM (or this TPM was cleared); Errc::data for a malformed blob.
  virtual Result<Secret> unseal(const SealedKey& sealed) = 0;
  virtual Result<std::vector<PcrValue>> read_pcrs(const PcrPolicy& policy) = 0;
  // "device:/dev/tpmrm0", "swtpm:...", "fake": what `persist status` shows.
  [[nodiscard]] virtual std::string describe() const = 0;
  // A hardware TPM (the device TCTI), not a simulator or a fake.
  [[nodiscard]] virtual bool is_real() const = 0;
};

// Opens the TPM behind a TCTI configuration string (tss2-tctildr syntax).
Result<std::unique_ptr<Tpm>> open_tpm(std::string_view tcti);

}  // namespace cairn::agent::persist
