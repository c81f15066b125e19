#include "agent/runtime/module_reconciler.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/runtime/service.hpp"
#include "common/fs.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "common/time.hpp"

namespace cairn::agent {

// One update on the worker thread; shared with it, so a worker left to the process' exit
// (abandon) never touches freed state.
struct ModuleReconciler::Job {
  DesiredState state;
  std::string key;
  std::string attached_before;  // attached_key() when it started
  std::atomic<bool> stop{false};
  std::atomic<bool> done{false};
  UniqueFd done_fd;  // eventfd, readable once done: wait() sleeps on it
  std::optional<Result<modules::UpdateOutcome>> result;  // written before done
};

namespace {

constexpr std::size_t kMaxRecordBytes = 1 << 20;

// The registry's HttpClient, stopped by the service's stop: a request is not sent, and a
// streamed download is aborted at its next chunk. Errc::temporary is not retried by the
// registry client (it retries Errc::unavailable only), so the update ends at once.
class StoppableHttp final : public HttpClient {
 public:
  StoppableHttp(std::unique_ptr<HttpClient> inner, std::function<bool()> stop)
      : inner_(std::move(inner)), stop_(std::move(stop)) {}

  Result<HttpResponse> send(const HttpRequest& request) override {
    if (stop_()) return stopped(request);
    if (!request.body_sink) return inner_->send(request);
    HttpRequest r = request;
    r.body_sink = [this, &request](long status, std::string_view chunk) {
      return !stop_() && request.body_sink(status, chunk);
    };
    auto answer = inner_->send(r);
    if (!answer && stop_()) return stopped(request);
    return answer;
  }

 private:
  static Result<HttpResponse> stopped(const HttpRequest& request) {
    return fail(Errc::temporary, request.method + " " + request.url + ": abandoned, the agent is stopping");
  }
  std::unique_ptr<HttpClient> inner_;
  std::function<bool()> stop_;
};

Json refs_json(const std::vector<protocol::ModuleRef>& refs) {
  Json list = Json::array();
  for (const auto& d : refs) list.push_back({{"name", d.name}, {"digest", d.digest}, {"required", d.required}});
  return list;
}

Result<std::optional<DesiredState>> load_record(const std::filesystem::path& file) {
  auto text = read_file_if_exists(file, kMaxRecordBytes);
  if (!text) return fail(text.error());
  if (!*text) return std::optional<DesiredState>{};
  return decode_json<std::optional<DesiredState>>(**text, file.string(), [](const Json& j) {
    DesiredState s;
    s.policy_version = j.at("policy_version").get<std::uint64_t>();
    for (const auto& d : j.at("desired")) {
      s.desired.push_back({d.at("name").get<std::string>(), d.at("digest").get<std::string>(), false,
                           d.value("required", false)});
    }
    return std::optional(s);
  });
}

// The attached set as one string (sorted name@image digest), to tell whether a change landed.
std::string attached_key(const std::vector<modules::AttachedModule>& attached) {
  std::vector<std::string> lines;
  for (const auto& a : attached) lines.push_back(a.name + "@" + a.image_digest);
  std::sort(lines.begin(), lines.end());
  std::string key;
  for (const auto& l : lines) key += l + "\n";
  return key;
}

// Errc::refused (signature, trust policy, a required module refused) and Errc::data (digest
// mismatch, malformed manifest) do not heal by themselves: the same bytes fail the same way.
bool permanent(const Error& e) { return e.code == Errc::refused || e.code == Errc::data; }

}  // namespace

std::string desired_key(const DesiredState& state) {
  std::vector<std::string> lines;
  for (const auto& d : state.desired) lines.push_back(d.name + "@" + d.digest + (d.required ? "!" : ""));
  std::sort(lines.begin(), lines.end());
  std::string key;
  for (const auto& l : lines) key += l + "\n";
  return key + "policy=" + std::to_string(state.policy_version);
}

std::unique_ptr<HttpClient> stoppable_http(std::unique_ptr<HttpClient> inner, std::function<bool()> stop) {
  return std::make_unique<StoppableHttp>(std::move(inner), std::move(stop));
}

ModuleApplyFn make_module_apply(const AgentConfig& config) {
  return [config](const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339,
                  const std::function<bool()>& stop) {
    modules::UpdateHooks hooks;
    hooks.stop = stop;
    hooks.wrap_http = [stop](std::unique_ptr<HttpClient> inner) { return stoppable_http(std::move(inner), stop); };
    return modules::update_from_config(config, desired, now_rfc3339, hooks);
  };
}

AttachedFn make_attached_reader(const AgentConfig& config) {
  return [dir = config.state_dir() / "modules"] { return modules::ModuleStore(dir).load_attached(); };
}

std::filesystem::path reconciled_file(const AgentConfig& config) {
  return config.state_dir() / "modules/reconciled.json";
}

ModuleReconciler::ModuleReconciler(const Clock& clock, std::function<double()> random01, ReconcilerOptions options,
                                   ModuleApplyFn apply, AttachedFn attached, std::filesystem::path record_file)
    : clock_(clock), random01_(std::move(random01)), options_(options), apply_(std::move(apply)),
      attached_(std::move(attached)), record_file_(std::move(record_file)) {
  auto loaded = load_record(record_file_);
  if (!loaded) {
    // Unreadable: as if the node never reconciled; the next set is compared with what is attached.
    log::warn("modules.reconciled_unreadable", {{"file", record_file_.string()}, {"error", loaded.error().message}});
  } else {
    reconciled_ = std::move(*loaded);
  }
}

ModuleReconciler::~ModuleReconciler() {
  request_stop();
  if (thread_.joinable()) thread_.join();
}

std::optional<ModuleReconciler::Finished> ModuleReconciler::offer(DesiredState state) {
  // A node that never reconciled starts from the empty set under the policy it has now: what
  // was attached by hand before control assigned anything stays until control's set changes.
  if (!reconciled_) reconciled_ = DesiredState{{}, state.policy_version};
  latest_ = std::move(state);
  return tick();
}

std::optional<ModuleReconciler::Finished> ModuleReconciler::tick() {
  std::optional<Finished> finished;
  if (job_ && job_->done.load()) finished = settle();
  if (!job_ && !stopping_) start();
  return finished;
}

std::optional<Clock::MonoTime> ModuleReconciler::retry_at() const {
  if (job_ || stopping_ || !latest_ || held_key_.empty() || held_key_ != desired_key(*latest_)) return std::nullopt;
  return retry_at_;
}

void ModuleReconciler::start() {
  if (!latest_) return;
  const auto key = desired_key(*latest_);
  if (reconciled_ && desired_key(*reconciled_) == key) return;  // converged, or changed by hand since
  if (!held_key_.empty() && held_key_ != key) {
    held_key_.clear();  // a new set: a new episode, tried at once
    failures_ = 0;
  }
  auto attached = attached_();
  if (!attached) log::warn("modules.attached_unreadable", {{"error", attached.error().message}});
  const bool same_policy = reconciled_ && reconciled_->policy_version == latest_->policy_version;
  if (attached && same_policy && modules::matches_desired(*attached, latest_->desired)) {
    // Already there (`cairn-agent update` by hand, or an earlier run): nothing to fetch.
    record(*latest_);
    held_key_.clear();
    failures_ = 0;
    return;
  }
  if (!held_key_.empty() && clock_.monotonic() < retry_at_) return;  // backing off

  auto job = std::make_shared<Job>();
  job->state = *latest_;
  job->key = key;
  job->attached_before = attached ? attached_key(*attached) : "(unreadable)";
  job->done_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!job->done_fd) {
    log::error("modules.apply_not_started", {{"error", std::string("eventfd: ") + std::strerror(errno)}});
    return;  // tried again at the next tick
  }
  job_ = job;
  ++attempts_;
  log::info("modules.apply_start", {{"modules", job->state.desired.size()}, {"policy_version", job->state.policy_version},
                                    {"attempt", failures_ + 1}});
  thread_ = std::thread([job, apply = apply_, now = format_rfc3339(clock_.now())] {
    auto result = apply(job->state.desired, now, [job] { return job->stop.load(); });
    job->result.emplace(std::move(result));
    job->done.store(true);
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(job->done_fd.get(), &one, sizeof one);
  });
}

ModuleReconciler::Finished ModuleReconciler::settle() {
  thread_.join();
  auto job = std::move(job_);
  Finished f;
  f.state = job->state;
  auto& result = *job->result;
  if (result) f.changed = attached_key(result->change.attached) != job->attached_before;
  if (result && result->failed.empty()) {
    f.applied = true;
    f.outcome = std::move(*result);
    record(job->state);
    held_key_.clear();
    failures_ = 0;
    return f;
  }
  if (result) {
    f.error = result->first_error.value_or(Error{Errc::internal, "a desired module was left out", {}});
    f.outcome = std::move(*result);
  } else {
    f.error = result.error();
  }
  if (job->stop.load() && f.error->code == Errc::temporary) {
    f.abandoned = true;
    return f;
  }
  if (held_key_ != job->key) failures_ = 0;
  ++failures_;
  held_key_ = job->key;
  ServiceOptions backoff;
  backoff.min_backoff = options_.min_backoff;
  backoff.max_backoff = options_.max_backoff;
  // A permanent refusal waits the cap: retrying sooner would fetch the same refused bytes.
  f.retry_in = backoff_delay(backoff, permanent(*f.error) ? 64 : failures_, random01_());
  retry_at_ = clock_.monotonic() + f.retry_in;
  return f;
}

void ModuleReconciler::record(const DesiredState& state) {
  reconciled_ = state;
  const auto text = dump_json({{"desired", refs_json(state.desired)}, {"policy_version", state.policy_version}}, 2) + "\n";
  if (auto old = read_file_if_exists(record_file_, kMaxRecordBytes); old && *old && **old == text) return;
  if (auto ok = write_file_atomic(record_file_, text); !ok) {
    // In memory it holds for this run; the next start compares with what is attached.
    log::warn("modules.reconciled_not_saved", {{"file", record_file_.string()}, {"error", ok.error().message}});
  }
}

void ModuleReconciler::request_stop() {
  stopping_ = true;
  if (job_) job_->stop.store(true);
}

bool ModuleReconciler::wait(Clock::MonoTime deadline) {
  while (job_ && !job_->done.load()) {
    if (clock_.monotonic() >= deadline) return false;
    (void)clock_.sleep_until(deadline, job_->done_fd.get());
  }
  if (job_) (void)settle();
  return true;
}

void ModuleReconciler::abandon() {
  if (thread_.joinable()) thread_.detach();
  job_.reset();
}

}  // namespace cairn::agent
