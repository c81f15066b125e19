// The TPM2 backend of Tpm: tpm2-tss ESYS through a TCTI loaded by tss2-tctildr, blobs
// marshalled with tss2-mu. The only file of Cairn that includes tss2 headers (STYLE.md 3).
//
// Sealing follows what systemd-cryptenroll does (TPM 2.0 Part 1, "Sealed data objects"): a
// storage primary key is derived in the owner hierarchy from a fixed template (the TCG's ECC
// P-256 SRK template), so it is the same key on every boot of this TPM and another on any other
// TPM; the secret becomes a KEYEDHASH object under it whose only authorization is a PolicyPCR
// over the configured PCRs. Sessions are salted to that primary and encrypt the secret on the
// bus (the command's inSensitive when sealing, the response's outData when unsealing).
#include "agent/persist/tpm.hpp"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "common/crypto.hpp"
#include "common/dynamic_library.hpp"

namespace cairn::agent::persist {

std::string pcr_list(const std::vector<int>& pcrs) {
  std::string out;
  for (int p : pcrs) out += (out.empty() ? "" : "+") + std::to_string(p);
  return out;
}

namespace {

// tpm2-tss is loaded on first use (dlopen, as agent/tasks/archive.cpp does for libarchive): only
// the persist stage and the persist commands talk to the TPM, so the service loop does not map
// ESYS, the TCTI loader, the marshalling and error-text libraries and their closure (agent RSS).
// Only the declarations of the tss2 headers are used here.
#define CAIRN_TSS2_ESYS(X) \
  X(Esys_Create) \
  X(Esys_CreatePrimary) \
  X(Esys_Finalize) \
  X(Esys_FlushContext) \
  X(Esys_Free) \
  X(Esys_Initialize) \
  X(Esys_Load) \
  X(Esys_PCR_Read) \
  X(Esys_PolicyGetDigest) \
  X(Esys_PolicyPCR) \
  X(Esys_StartAuthSession) \
  X(Esys_TRSess_SetAttributes) \
  X(Esys_Unseal)
#define CAIRN_TSS2_TCTILDR(X) \
  X(Tss2_TctiLdr_Finalize) \
  X(Tss2_TctiLdr_Initialize)
#define CAIRN_TSS2_MU(X) \
  X(Tss2_MU_TPM2B_PRIVATE_Marshal) \
  X(Tss2_MU_TPM2B_PRIVATE_Unmarshal) \
  X(Tss2_MU_TPM2B_PUBLIC_Marshal) \
  X(Tss2_MU_TPM2B_PUBLIC_Unmarshal)
#define CAIRN_TSS2_RC(X) \
  X(Tss2_RC_Decode)

struct LibTss2 {
#define X(f) decltype(&::f) f = nullptr;
  CAIRN_TSS2_ESYS(X)
  CAIRN_TSS2_TCTILDR(X)
  CAIRN_TSS2_MU(X)
  CAIRN_TSS2_RC(X)
#undef X
};

Result<LibTss2> load_tss2() {
  LibTss2 lib;
  MissingSymbols missing;
  const auto open = [](const char* soname) {
    return DynamicLibrary::open(soname, "the TPM",
                                "install tpm2-tss (libtss2-esys-3.0.2-0, libtss2-tctildr0, libtss2-mu0, libtss2-rc0) on the node");
  };
  auto esys = open("libtss2-esys.so.0");
  if (!esys) return fail(esys.error());
  auto tctildr = open("libtss2-tctildr.so.0");
  if (!tctildr) return fail(tctildr.error());
  auto mu = open("libtss2-mu.so.0");
  if (!mu) return fail(mu.error());
  auto rc = open("libtss2-rc.so.0");
  if (!rc) return fail(rc.error());
#define X(f) so.bind(lib.f, #f, missing);
  {
    const auto& so = *esys;
    CAIRN_TSS2_ESYS(X)
  }
  {
    const auto& so = *tctildr;
    CAIRN_TSS2_TCTILDR(X)
  }
  {
    const auto& so = *mu;
    CAIRN_TSS2_MU(X)
  }
  {
    const auto& so = *rc;
    CAIRN_TSS2_RC(X)
  }
#undef X
  if (auto ok = missing.check("tpm2-tss", "install tpm2-tss 3.0 or later"); !ok) return fail(ok.error());
  return lib;
}
#undef CAIRN_TSS2_ESYS
#undef CAIRN_TSS2_TCTILDR
#undef CAIRN_TSS2_MU
#undef CAIRN_TSS2_RC

// Loaded once per process; a failure is remembered (the node's libraries do not change).
const Result<LibTss2>& loaded_tss2() {
  static const Result<LibTss2> loaded = load_tss2();
  return loaded;
}
// Only after Connection::open() loaded it: every Tpm comes from open_tpm(), which opens one.
const LibTss2& lib() { return *loaded_tss2(); }

constexpr std::size_t kMaxBlobBytes = 4096;

std::string rc_text(TSS2_RC rc) {
  const char* text = lib().Tss2_RC_Decode(rc);
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%x", rc);
  return std::string(text ? text : "unknown") + " (" + hex + ")";
}

// A format-1 TPM response code of the given kind, whichever handle/session/parameter it names
// (TPM 2.0 Part 2, "Response code values").
bool is_tpm_rc(TSS2_RC rc, TPM2_RC kind) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return false;
  if ((rc & TPM2_RC_FMT1) == 0) return false;
  return (rc & 0x3f) == (kind & 0x3f);
}

Error tpm_error(std::string_view what, TSS2_RC rc, std::string hint = {}) {
  return Error{Errc::io, "TPM " + std::string(what) + ": " + rc_text(rc),
               hint.empty() ? "check that the TPM is present and not in use (the TCTI configuration names it)"
                            : std::move(hint)};
}

Status check_policy(const PcrPolicy& policy) {
  if (policy.bank != "sha256") {
    return fail(Errc::config, "PCR bank '" + policy.bank + "': only sha256 is supported", "set the bank to sha256");
  }
  if (policy.pcrs.empty()) {
    return fail(Errc::config, "PCR policy: no PCR named", "bind the key to at least one PCR (default: 7)");
  }
  for (int p : policy.pcrs) {
    if (p < 0 || p > 23) {
      return fail(Errc::config, "PCR " + std::to_string(p) + ": out of range", "PCR indices are 0 to 23");
    }
  }
  return {};
}

TPML_PCR_SELECTION selection_of(const std::vector<int>& pcrs) {
  TPML_PCR_SELECTION sel{};
  sel.count = 1;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[0].sizeofSelect = 3;
  for (int p : pcrs) sel.pcrSelections[0].pcrSelect[p / 8] |= static_cast<BYTE>(1u << (p % 8));
  return sel;
}

// The TCG "Storage Root Key" template (TCG TPM v2.0 Provisioning Guidance, ECC NIST P-256).
TPM2B_PUBLIC primary_template() {
  TPM2B_PUBLIC t{};
  auto& a = t.publicArea;
  a.type = TPM2_ALG_ECC;
  a.nameAlg = TPM2_ALG_SHA256;
  a.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
  a.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  a.parameters.eccDetail.symmetric.keyBits.aes = 128;
  a.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  a.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  a.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  a.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  a.unique.ecc.x.size = 32;
  a.unique.ecc.y.size = 32;
  return t;
}

// One connection to the TPM: the TCTI and the ESYS context on it, and the transient objects
// made through it, flushed when it ends. Opened per operation, so a simulator that serves one
// client at a time is free between calls.
// tpm2-tss logs every TPM error on stderr (TSS2_LOG, default warnings): the errors we return
// say the same with the input and the next step, so its own logging is off unless the
// operator set TSS2_LOG.
void quiet_tss2_logging() {
  static std::once_flag once;
  std::call_once(once, [] { ::setenv("TSS2_LOG", "all+none", 0); });
}

class Connection {
 public:
  static Result<Connection> open(const std::string& tcti) {
    if (const auto& loaded = loaded_tss2(); !loaded) return fail(loaded.error());
    quiet_tss2_logging();
    Connection c;
    TSS2_RC rc = lib().Tss2_TctiLdr_Initialize(tcti.c_str(), &c.tcti_);
    if (rc != TSS2_RC_SUCCESS) {
      return fail(Errc::unavailable, "TPM TCTI '" + tcti + "': " + rc_text(rc),
                  "check the TPM device (or simulator) and the persist tcti setting");
    }
    rc = lib().Esys_Initialize(&c.ctx_, c.tcti_, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      return fail(Errc::unavailable, "TPM on '" + tcti + "': ESYS initialization: " + rc_text(rc),
                  "check the TPM device (or simulator) and the persist tcti setting");
    }
    return c;
  }
  Connection(Connection&& o) noexcept
      : tcti_(std::exchange(o.tcti_, nullptr)), ctx_(std::exchange(o.ctx_, nullptr)), owned_(std::move(o.owned_)) {}
  Connection& operator=(Connection&&) = delete;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    if (ctx_ != nullptr) {
      for (ESYS_TR h : owned_) lib().Esys_FlushContext(ctx_, h);
      lib().Esys_Finalize(&ctx_);
    }
    if (tcti_ != nullptr) lib().Tss2_TctiLdr_Finalize(&tcti_);
  }

  [[nodiscard]] ESYS_CONTEXT* ctx() const { return ctx_; }
  void own(ESYS_TR handle) { owned_.push_back(handle); }
  // The TPM flushed it itself (a session without continueSession after a successful command).
  void forget(ESYS_TR handle) { std::erase(owned_, handle); }

  Result<ESYS_TR> create_primary() {
    const TPM2B_SENSITIVE_CREATE sensitive{};
    const TPM2B_PUBLIC tmpl = primary_template();
    const TPM2B_DATA outside{};
    const TPML_PCR_SELECTION creation_pcr{};
    ESYS_TR primary = ESYS_TR_NONE;
    const TSS2_RC rc = lib().Esys_CreatePrimary(ctx_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                          &tmpl, &outside, &creation_pcr, &primary, nullptr, nullptr, nullptr, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      return fail(tpm_error("CreatePrimary (owner hierarchy)", rc,
                            "the owner hierarchy needs an empty authorization value (as systemd-cryptenroll expects)"));
    }
    own(primary);
    return primary;
  }

  // A session salted to `salt_key`, AES-128-CFB parameter encryption in the direction given.
  Result<ESYS_TR> start_session(ESYS_TR salt_key, TPM2_SE type, TPMA_SESSION encrypt_flag) {
    TPMT_SYM_DEF sym{};
    sym.algorithm = TPM2_ALG_AES;
    sym.keyBits.aes = 128;
    sym.mode.aes = TPM2_ALG_CFB;
    ESYS_TR session = ESYS_TR_NONE;
    TSS2_RC rc = lib().Esys_StartAuthSession(ctx_, salt_key, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr,
                                       type, &sym, TPM2_ALG_SHA256, &session);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("StartAuthSession", rc));
    own(session);
    if (encrypt_flag != 0) {
      rc = lib().Esys_TRSess_SetAttributes(ctx_, session, encrypt_flag, 0xff);
      if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("session attributes", rc));
    }
    return session;
  }

  // The policy digest of PolicyPCR over the PCRs' current values (a trial session).
  Result<TPM2B_DIGEST> pcr_policy_digest(const TPML_PCR_SELECTION& sel) {
    auto trial = start_session(ESYS_TR_NONE, TPM2_SE_TRIAL, 0);
    if (!trial) return fail(trial.error());
    const TPM2B_DIGEST empty{};
    TSS2_RC rc = lib().Esys_PolicyPCR(ctx_, *trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, &sel);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("PolicyPCR (trial)", rc));
    TPM2B_DIGEST* digest = nullptr;
    rc = lib().Esys_PolicyGetDigest(ctx_, *trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digest);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("PolicyGetDigest", rc));
    const TPM2B_DIGEST out = *digest;
    lib().Esys_Free(digest);
    return out;
  }

 private:
  Connection() = default;
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* ctx_ = nullptr;
  std::vector<ESYS_TR> owned_;
};

Result<std::string> marshal(const TPM2B_PUBLIC& pub, const TPM2B_PRIVATE& priv) {
  std::string buf(sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE), '\0');
  auto* data = reinterpret_cast<uint8_t*>(buf.data());
  size_t offset = 0;
  TSS2_RC rc = lib().Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, data, buf.size(), &offset);
  if (rc == TSS2_RC_SUCCESS) rc = lib().Tss2_MU_TPM2B_PRIVATE_Marshal(&priv, data, buf.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return fail(Errc::internal, "marshalling the sealed object: " + rc_text(rc));
  buf.resize(offset);
  return buf;
}

Status unmarshal(const std::string& blob, TPM2B_PUBLIC& pub, TPM2B_PRIVATE& priv) {
  if (blob.empty() || blob.size() > kMaxBlobBytes) {
    return fail(Errc::data, "sealed key blob of " + std::to_string(blob.size()) + " bytes: not a sealed TPM2 object",
                "the LUKS2 token is damaged; open the volume with the recovery key and run `cairn-agent persist reseal`");
  }
  const auto* data = reinterpret_cast<const uint8_t*>(blob.data());
  size_t offset = 0;
  TSS2_RC rc = lib().Tss2_MU_TPM2B_PUBLIC_Unmarshal(data, blob.size(), &offset, &pub);
  if (rc == TSS2_RC_SUCCESS) rc = lib().Tss2_MU_TPM2B_PRIVATE_Unmarshal(data, blob.size(), &offset, &priv);
  if (rc != TSS2_RC_SUCCESS || offset != blob.size()) {
    return fail(Errc::data, "sealed key blob: not a marshalled TPM2B_PUBLIC + TPM2B_PRIVATE" +
                                (rc != TSS2_RC_SUCCESS ? " (" + rc_text(rc) + ")" : std::string(" (trailing bytes)")),
                "the LUKS2 token is damaged; open the volume with the recovery key and run `cairn-agent persist reseal`");
  }
  if (pub.publicArea.type != TPM2_ALG_KEYEDHASH) {
    return fail(Errc::data, "sealed key blob: not a sealed data object",
                "the LUKS2 token is damaged; open the volume with the recovery key and run `cairn-agent persist reseal`");
  }
  return {};
}

Result<std::vector<PcrValue>> read_pcrs_on(Connection& c, const std::vector<int>& pcrs) {
  std::vector<PcrValue> out;
  for (int p : pcrs) {
    const TPML_PCR_SELECTION sel = selection_of({p});
    UINT32 counter = 0;
    TPML_PCR_SELECTION* sel_out = nullptr;
    TPML_DIGEST* values = nullptr;
    const TSS2_RC rc =
        lib().Esys_PCR_Read(c.ctx(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &sel, &counter, &sel_out, &values);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("PCR_Read of PCR " + std::to_string(p), rc));
    const bool ok = values->count == 1;
    std::string hex = ok ? hex_encode(values->digests[0].buffer, values->digests[0].size) : std::string{};
    lib().Esys_Free(sel_out);
    lib().Esys_Free(values);
    if (!ok) {
      return fail(Errc::config, "PCR " + std::to_string(p) + " of the sha256 bank: not allocated on this TPM",
                  "bind the key to PCRs of an allocated bank");
    }
    out.push_back(PcrValue{p, std::move(hex)});
  }
  return out;
}

std::string pcr_values_text(const std::vector<PcrValue>& values) {
  std::string out;
  for (const auto& v : values) out += (out.empty() ? "" : ", ") + std::to_string(v.index) + "=" + v.sha256_hex;
  return out;
}

class EsysTpm final : public Tpm {
 public:
  explicit EsysTpm(std::string tcti) : tcti_(std::move(tcti)) {}

  Result<SealedKey> seal(const Secret& secret, const PcrPolicy& policy) override {
    if (auto ok = check_policy(policy); !ok) return fail(ok.error());
    if (secret.empty() || secret.size() > sizeof(TPM2B_SENSITIVE_DATA::buffer)) {
      return fail(Errc::internal, "seal: a secret of " + std::to_string(secret.size()) + " bytes");
    }
    auto conn = Connection::open(tcti_);
    if (!conn) return fail(conn.error());
    auto primary = conn->create_primary();
    if (!primary) return fail(primary.error());
    const TPML_PCR_SELECTION sel = selection_of(policy.pcrs);
    auto digest = conn->pcr_policy_digest(sel);
    if (!digest) return fail(digest.error());

    TPM2B_SENSITIVE_CREATE sensitive{};
    sensitive.sensitive.data.size = static_cast<UINT16>(secret.size());
    std::memcpy(sensitive.sensitive.data.buffer, secret.view().data(), secret.size());
    TPM2B_PUBLIC tmpl{};
    auto& a = tmpl.publicArea;
    a.type = TPM2_ALG_KEYEDHASH;
    a.nameAlg = TPM2_ALG_SHA256;
    // No userWithAuth: the policy is the only way to use it. fixedTPM/fixedParent: it cannot
    // be duplicated to another TPM.
    a.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    a.authPolicy = *digest;
    a.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
    const TPM2B_DATA outside{};
    const TPML_PCR_SELECTION creation_pcr{};

    auto session = conn->start_session(*primary, TPM2_SE_HMAC, TPMA_SESSION_DECRYPT);
    if (!session) return fail(session.error());
    TPM2B_PRIVATE* out_private = nullptr;
    TPM2B_PUBLIC* out_public = nullptr;
    const TSS2_RC rc = lib().Esys_Create(conn->ctx(), *primary, *session, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &tmpl,
                                   &outside, &creation_pcr, &out_private, &out_public, nullptr, nullptr, nullptr);
    explicit_bzero(&sensitive, sizeof sensitive);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("Create (sealed object)", rc));
    conn->forget(*session);
    auto blob = marshal(*out_public, *out_private);
    lib().Esys_Free(out_private);
    lib().Esys_Free(out_public);
    if (!blob) return fail(blob.error());
    return SealedKey{std::move(*blob), policy};
  }

  Result<Secret> unseal(const SealedKey& sealed) override {
    if (auto ok = check_policy(sealed.policy); !ok) return fail(ok.error());
    TPM2B_PUBLIC pub{};
    TPM2B_PRIVATE priv{};
    if (auto ok = unmarshal(sealed.blob, pub, priv); !ok) return fail(ok.error());
    auto conn = Connection::open(tcti_);
    if (!conn) return fail(conn.error());
    auto primary = conn->create_primary();
    if (!primary) return fail(primary.error());
    ESYS_TR object = ESYS_TR_NONE;
    TSS2_RC rc = lib().Esys_Load(conn->ctx(), *primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub, &object);
    if (rc != TSS2_RC_SUCCESS) {
      if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER) {
        return fail(Errc::refused,
                    "the sealed volume key cannot be loaded by this TPM (" + rc_text(rc) +
                        "): it was sealed by another TPM, or this TPM's owner hierarchy was cleared",
                    "open the volume with the recovery key (or the escrow key) and run `cairn-agent persist reseal`; "
                    "or, to discard the data, `cairn-agent volume-setup --wipe --yes-destroy-data`");
      }
      return fail(tpm_error("Load (sealed object)", rc));
    }
    conn->own(object);

    auto session = conn->start_session(*primary, TPM2_SE_POLICY, TPMA_SESSION_ENCRYPT);
    if (!session) return fail(session.error());
    const TPML_PCR_SELECTION sel = selection_of(sealed.policy.pcrs);
    const TPM2B_DIGEST empty{};
    rc = lib().Esys_PolicyPCR(conn->ctx(), *session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, &sel);
    if (rc != TSS2_RC_SUCCESS) return fail(tpm_error("PolicyPCR", rc));
    TPM2B_SENSITIVE_DATA* data = nullptr;
    rc = lib().Esys_Unseal(conn->ctx(), object, *session, ESYS_TR_NONE, ESYS_TR_NONE, &data);
    if (rc != TSS2_RC_SUCCESS) {
      if (is_tpm_rc(rc, TPM2_RC_POLICY_FAIL) || is_tpm_rc(rc, TPM2_RC_PCR_CHANGED)) {
        auto now = read_pcrs_on(*conn, sealed.policy.pcrs);
        const std::string measured = now ? pcr_values_text(*now) : "unreadable (" + now.error().message + ")";
        return fail(Errc::refused,
                    "the TPM refused to unseal the volume key: PCR " + pcr_list(sealed.policy.pcrs) + " (" +
                        sealed.policy.bank + ") differ from their values when the key was sealed; measured now: " +
                        measured,
                    "if the change is expected (firmware, boot loader or Secure Boot update), open the volume with "
                    "the recovery key and run `cairn-agent persist reseal`; otherwise find out what changed the boot");
      }
      return fail(tpm_error("Unseal", rc));
    }
    conn->forget(*session);
    Secret secret(std::string(reinterpret_cast<const char*>(data->buffer), data->size));
    explicit_bzero(data->buffer, data->size);
    lib().Esys_Free(data);
    return secret;
  }

  Result<std::vector<PcrValue>> read_pcrs(const PcrPolicy& policy) override {
    if (auto ok = check_policy(policy); !ok) return fail(ok.error());
    auto conn = Connection::open(tcti_);
    if (!conn) return fail(conn.error());
    return read_pcrs_on(*conn, policy.pcrs);
  }

  [[nodiscard]] std::string describe() const override { return tcti_; }
  [[nodiscard]] bool is_real() const override { return tcti_.starts_with("device"); }

 private:
  std::string tcti_;
};

}  // namespace

Result<std::unique_ptr<Tpm>> open_tpm(std::string_view tcti) {
  if (tcti.empty()) return fail(Errc::config, "persist tcti: empty", "e.g. device:/dev/tpmrm0");
  // Connect once now, so a missing TPM is reported where it is configured, not at first use.
  if (auto probe = Connection::open(std::string(tcti)); !probe) return fail(probe.error());
  std::unique_ptr<Tpm> tpm = std::make_unique<EsysTpm>(std::string(tcti));
  return tpm;
}

}  // namespace cairn::agent::persist
