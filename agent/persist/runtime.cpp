#include "agent/persist/runtime.hpp"

#include "agent/enroll/credentials.hpp"
#include "agent/enroll/enroll.hpp"
#include "agent/persist/host.hpp"
#include "agent/transport/control_client.hpp"
#include "common/fs.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent::persist {
namespace {

class ControlEscrow final : public EscrowSource {
 public:
  explicit ControlEscrow(std::unique_ptr<ControlClient> client) : client_(std::move(client)) {}
  Result<Secret> fetch() override {
    auto key = client_->escrow_key();
    if (!key) return fail(key.error());
    return Secret(std::move(*key));
  }

 private:
  std::unique_ptr<ControlClient> client_;
};

}  // namespace

Result<VolumeConfig> volume_config(const AgentConfig& config) {
  VolumeConfig v;
  auto rule = parse_disk_rule(config.persist.disk);
  if (!rule) return fail(rule.error());
  v.disk = *rule;
  v.min_bytes = config.persist.min_size_mib * 1024 * 1024;
  v.policy.pcrs = config.persist.pcrs;
  v.key_source = config.persist.key_source == "escrow" ? KeySource::escrow : KeySource::tpm;
  v.mapper_name = config.persist.mapper_name;
  v.mount_point = config.persist_dir;
  return v;
}

Result<std::unique_ptr<PersistRuntime>> open_runtime(const AgentConfig& config, bool with_key_source,
                                                     const std::filesystem::path& credentials_dir) {
  auto rt = std::make_unique<PersistRuntime>();
  auto v = volume_config(config);
  if (!v) return fail(v.error());
  rt->config = std::move(*v);
  rt->crypt = make_libcryptsetup();
  rt->host = make_system_host(config.root, SystemClock::instance());
  if (with_key_source) {
    if (rt->config.key_source == KeySource::tpm) {
      auto tpm = open_tpm(config.persist.tcti);
      if (!tpm) {
        auto e = tpm.error();
        e.hint += "; without a TPM, set persist key_source to \"escrow\" explicitly (the key is then kept by the "
                  "control service)";
        return fail(e.with_context("persist key source tpm"));
      }
      rt->tpm = std::move(*tpm);
    } else {
      const auto dir = credentials_dir.empty() ? config.state_dir() : credentials_dir;
      auto creds = CredentialStore(dir).load();
      if (!creds) return fail(creds.error().with_context("persist key source escrow"));
      if (!*creds) {
        return fail(Errc::config, "persist key source escrow: no node certificate in " + dir.string(),
                    "enroll first (`cairn-agent enroll`); the escrow key is fetched over mTLS");
      }
      auto url = enrolled_control_url(config);
      if (!url) return fail(url.error().with_context("persist key source escrow"));
      auto tls = control_tls(config, *creds);
      if (!tls) return fail(tls.error().with_context("persist key source escrow"));
      rt->config.node_id = (*creds)->cert.subject_cn;
      rt->escrow = std::make_unique<ControlEscrow>(std::make_unique<ControlClient>(*url, *tls));
    }
  }
  rt->deps.tpm = rt->tpm.get();
  rt->deps.escrow = rt->escrow.get();
  rt->deps.crypt = rt->crypt.get();
  rt->deps.host = rt->host.get();
  rt->deps.now_rfc3339 = [] { return format_rfc3339(SystemClock::instance().now()); };
  const Root root = config.root;
  rt->deps.critical = [root](const protocol::Event& event) {
    log::critical("persist.unlock_failed", {{"event_id", event.id}, {"message", event.message}});
    if (auto ok = keep_pending_event(root, event); !ok) {
      log::error("persist.event_not_kept", {{"error", ok.error().message}});
    }
  };
  return rt;
}

std::filesystem::path pending_event_path(const Root& root) { return root / "run/cairn/persist-event.json"; }

Status keep_pending_event(const Root& root, const protocol::Event& event) {
  const Json j{{"id", event.id}, {"severity", event.severity}, {"kind", event.kind}, {"message", event.message},
               {"time", event.time}};
  return write_file_atomic(pending_event_path(root), dump_json(j, 2) + "\n", 0644);
}

Status clear_pending_event(const Root& root) {
  std::error_code ec;
  std::filesystem::remove(pending_event_path(root), ec);
  if (ec) return fail(Errc::io, pending_event_path(root).string() + ": " + ec.message());
  return {};
}

Result<std::optional<Json>> read_pending_event(const Root& root) {
  auto text = read_file_if_exists(pending_event_path(root), 64 * 1024);
  if (!text) return fail(text.error());
  if (!*text) return std::optional<Json>{};
  auto j = parse_json(**text, pending_event_path(root).string());
  if (!j) return fail(j.error());
  return std::optional<Json>(std::move(*j));
}

}  // namespace cairn::agent::persist
