// Bootstrap configuration of a booting node: what it needs before it has any state (the
// control URL, the CA fingerprint, the bootstrap token, the persist mode, its labels). One
// image serves every customer: the values come from the kernel command line
//   cairn.control=https://HOST:PORT cairn.ca=<sha256 hex> cairn.token=<token> cairn.persist=tmpfs|disk
//   cairn.base=NAME@sha256:<hex> cairn.disk=<persist disk rule, e.g. boot-disk-free> cairn.pcrs=7+8+9
// from QEMU's fw-cfg entry opt/org.cairn/config, a JSON object
//   {"control_url": "...", "ca_fingerprint": "...", "token": "...", "persist": "tmpfs"|"disk",
//    "base": "NAME@sha256:<hex>", "disk": "boot-disk-free", "pcrs": "7+8+9", "labels": {"rack": "r1"}}
// or from the cloud's user-data (AWS, GCP, Azure, DigitalOcean, Hetzner, OpenStack: the
// metadata servers of the identity, identity/sources/user_data.hpp), holding the same JSON
// object, either alone or after a first line `#cairn-config` (so it reads as a cloud-init
// part type cloud-init leaves alone). User-data may not set `persist`, `disk` nor `pcrs` (/init
// and the boot artifact decide them before the network is up) nor `base` (the artifact seals it).
// `pcrs` only chooses the PCRs a NEW /persist key is sealed to: an existing volume is unsealed
// under the PCRs recorded in its own LUKS token, so editing cairn.pcrs= unseals nothing. Other user-data (a
// #cloud-config, a script) is not Cairn's and is ignored, said so in the notes.
// `base` seals the boot to one base OS module (its OCI manifest digest): the initramfs makes
// that module's union `/` and refuses anything else (DESIGN.md, "Boot flow").
// The kernel command line wins over fw-cfg, fw-cfg over user-data; the agent's config file and
// flags win over all. The token is secret: it is never logged, never written to disk by the
// boot, and wiped (forget_token) once enrollment has used it. A user-data token is readable by
// anything on the instance that can reach the metadata server: use single-use tokens there.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "common/clock.hpp"
#include "common/http.hpp"
#include "common/result.hpp"
#include "common/root.hpp"
#include "identity/cascade.hpp"

namespace cairn::agent::boot {

inline constexpr std::string_view kCmdlineSource = "kernel command line";
inline constexpr std::string_view kFwCfgSource = "fw-cfg opt/org.cairn/config";
inline constexpr std::string_view kFwCfgConfigPath = "sys/firmware/qemu_fw_cfg/by_name/opt/org.cairn/config/raw";
inline constexpr std::size_t kMaxCmdlineBytes = 4096;
inline constexpr std::size_t kMaxFwCfgConfigBytes = 64 * 1024;
inline constexpr std::size_t kMaxUserDataConfigBytes = 64 * 1024;
inline constexpr std::string_view kUserDataMarker = "#cairn-config";
// Labels a node asks for at enrollment (control keeps only the keys it allows).
inline constexpr std::size_t kMaxLabels = 32;
inline constexpr std::size_t kMaxLabelKeyBytes = 63;
inline constexpr std::size_t kMaxLabelValueBytes = 255;

// "user-data (aws)": how a value from a cloud's user-data names its source.
std::string user_data_source(std::string_view cloud);

struct Value {
  std::string value;
  std::string source;  // kCmdlineSource, kFwCfgSource, "config file or flag", "default"
};

struct Labels {
  std::map<std::string, std::string> values;
  std::string source;
};

struct Bootstrap {
  std::optional<Value> control_url;
  std::optional<Value> ca_fingerprint;
  std::optional<Value> token;
  std::optional<Value> persist;  // "tmpfs" (diskless) or "disk"
  std::optional<Value> base;     // sealed base module, NAME@sha256:<64 hex> (h-base)
  std::optional<Labels> labels;  // user-data (h-userdata): labels asked for at enrollment
  std::optional<Value> disk;     // persist disk rule (h-userdata): the disk image's boot entry says boot-disk-free
  std::optional<Value> pcrs;     // PCRs a new /persist key is sealed to, "7+8+9": the disk image's entry sets them
  // What the user-data lookup did, one line per cloud asked (h-userdata); never holds a value.
  std::vector<std::string> notes;
};

// The sealed base: the module NAME and the OCI manifest digest it is pinned to.
struct BaseRef {
  std::string name;
  std::string digest;  // sha256:<64 lower-case hex>
  [[nodiscard]] std::string str() const { return name + "@" + digest; }
};
// "NAME@sha256:<64 hex>" (a module name, the digest in lower case); Errc::config otherwise,
// naming `source`.
Result<BaseRef> parse_base_ref(std::string_view text, std::string_view source);

// The cairn.* words of a kernel command line; other words are ignored. A cairn.* key this
// version does not know is an error naming it (a typo must not boot with a default).
Result<Bootstrap> parse_kernel_cmdline(std::string_view cmdline);
// The JSON document of the fw-cfg entry.
Result<Bootstrap> parse_fw_cfg_config(std::string_view json);
// A cloud's user-data: the JSON object, or `#cairn-config` and the JSON object on the next
// lines. nullopt when the user-data is not Cairn's (cloud-config, script, MIME); Errc::config
// when it is Cairn's and wrong (malformed, unknown key, persist/base), naming the key and
// never quoting the document (it holds the token). `cloud` names the source.
Result<std::optional<Bootstrap>> parse_user_data(std::string_view text, std::string_view cloud);
// `high` where it has a value, else `low`.
Bootstrap merge(Bootstrap high, const Bootstrap& low);
// Reads <root>/proc/cmdline and the fw-cfg entry (absent: nothing from it) and merges them.
Result<Bootstrap> read_bootstrap(const Root& root);
// As above, then the user-data of the clouds `identity` points at (DMI hint, forced clouds,
// configured metadata URLs; none: nothing is probed), below both. A metadata server that does
// not answer is a note, unless it leaves the boot without a control URL: then Errc::unavailable
// (the network may be late), naming it.
Result<Bootstrap> read_bootstrap(const Root& root, const identity::Config& identity, HttpClient& http,
                                 const Clock& clock = SystemClock::instance());
// read_bootstrap(config.root, config.identity, a curl client). With attempts > 1 (the boot),
// an Errc::unavailable answer (a metadata server not reachable yet, the network late) is
// tried again after 0.5, 1, 2, ... s (at most 4 s), each retry logged without any value.
Result<Bootstrap> read_bootstrap(const AgentConfig& config, int attempts = 1,
                                 const Clock& clock = SystemClock::instance());

// Overwrites the token's bytes and drops it: called once enrollment has used it.
void forget_token(Bootstrap& bootstrap);

// Fills the fields of `config` the config file and flags left empty; what was set there
// keeps its value and is reported as such in the returned Bootstrap. Labels fill the keys the
// config file did not set.
Bootstrap apply(AgentConfig& config, const Bootstrap& bootstrap);

}  // namespace cairn::agent::boot
