// Structured logs: one event, one line (STYLE.md 16). Under systemd the fields go to the
// journal as CAIRN_* fields; otherwise one `key=value` line per event on stderr.
// Keys, tokens and private material are never passed here.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace cairn::log {

enum class Level { debug = 7, info = 6, warning = 4, error = 3, critical = 2 };

struct Field {
  std::string_view key;
  std::string value;
  Field(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  template <class N>
    requires std::is_arithmetic_v<N>
  Field(std::string_view k, N v) : key(k), value(std::to_string(v)) {}
};

// The level starts at info, or at $CAIRN_LOG_LEVEL (debug, info, warning, error) if set.
void set_min_level(Level level);
void event(Level level, std::string_view name, std::initializer_list<Field> fields = {});

inline void debug(std::string_view name, std::initializer_list<Field> f = {}) { event(Level::debug, name, f); }
inline void info(std::string_view name, std::initializer_list<Field> f = {}) { event(Level::info, name, f); }
inline void warn(std::string_view name, std::initializer_list<Field> f = {}) { event(Level::warning, name, f); }
inline void error(std::string_view name, std::initializer_list<Field> f = {}) { event(Level::error, name, f); }
inline void critical(std::string_view name, std::initializer_list<Field> f = {}) { event(Level::critical, name, f); }

}  // namespace cairn::log
