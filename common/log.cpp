#include "common/log.hpp"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/time.hpp"

namespace cairn::log {
namespace {

int level_from_env() {
  const char* env = std::getenv("CAIRN_LOG_LEVEL");
  const std::string_view v = env ? env : "";
  if (v == "debug") return static_cast<int>(Level::debug);
  if (v == "warning") return static_cast<int>(Level::warning);
  if (v == "error") return static_cast<int>(Level::error);
  return static_cast<int>(Level::info);
}

std::atomic<int> g_min_level{level_from_env()};

std::string_view level_name(Level level) {
  switch (level) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warning: return "warning";
    case Level::error: return "error";
    case Level::critical: return "critical";
  }
  return "info";
}

// systemd sets JOURNAL_STREAM=<dev>:<ino> for a service whose stderr is the journal
// (systemd.exec(5)); only then are native journal fields worth sending.
bool stderr_is_journal() {
  static const bool is_journal = [] {
    const char* env = std::getenv("JOURNAL_STREAM");
    if (env == nullptr) return false;
    unsigned long dev = 0, ino = 0;
    if (std::sscanf(env, "%lu:%lu", &dev, &ino) != 2) return false;
    struct stat st {};
    return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
  }();
  return is_journal;
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

void append_value(std::string& line, std::string_view v) {
  if (!needs_quotes(v)) {
    line.append(v);
    return;
  }
  line.push_back('"');
  for (char c : v) {
    switch (c) {
      case '"': line.append("\\\""); break;
      case '\\': line.append("\\\\"); break;
      case '\n': line.append("\\n"); break;
      case '\t': line.append("\\t"); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
          line.append(buf);
        } else {
          line.push_back(c);
        }
    }
  }
  line.push_back('"');
}

void to_journal(Level level, std::string_view name, std::initializer_list<Field> fields) {
  std::vector<std::string> items;
  items.reserve(fields.size() + 3);
  std::string message(name);
  for (const auto& f : fields) {
    message.push_back(' ');
    message.append(f.key).push_back('=');
    append_value(message, f.value);
  }
  items.push_back("MESSAGE=" + message);
  items.push_back("PRIORITY=" + std::to_string(static_cast<int>(level)));
  items.push_back("CAIRN_EVENT=" + std::string(name));
  for (const auto& f : fields) {
    std::string key = "CAIRN_";
    for (char c : f.key) key.push_back(c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : (c == '.' || c == '-') ? '_' : c);
    items.push_back(key + "=" + f.value);
  }
  std::vector<iovec> iov;
  iov.reserve(items.size());
  for (auto& s : items) iov.push_back({s.data(), s.size()});
  sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
}

}  // namespace

void set_min_level(Level level) { g_min_level = static_cast<int>(level); }

void event(Level level, std::string_view name, std::initializer_list<Field> fields) {
  if (static_cast<int>(level) > g_min_level.load(std::memory_order_relaxed)) return;
  if (stderr_is_journal()) {
    to_journal(level, name, fields);
    return;
  }
  std::string line = format_rfc3339(std::chrono::system_clock::now());
  line.append(" level=").append(level_name(level)).append(" event=").append(name);
  for (const auto& f : fields) {
    line.push_back(' ');
    line.append(f.key).push_back('=');
    append_value(line, f.value);
  }
  line.push_back('\n');
  // One write(2) per line, so concurrent events never interleave mid-line.
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace cairn::log
