#include "common/time.hpp"

#include <ctime>
#include <cstdio>

namespace cairn {

std::int64_t to_unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::chrono::system_clock::time_point from_unix_ms(std::int64_t ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
}

namespace {
// "2026-11-25T13:00:00" + ".123" when `millis` >= 0 + "Z".
std::string format_utc(std::time_t secs, int millis) {
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec);
  std::string out = buf;
  if (millis >= 0) {
    std::snprintf(buf, sizeof buf, ".%03d", millis);
    out += buf;
  }
  return out + "Z";
}
}  // namespace

std::string format_rfc3339(std::chrono::system_clock::time_point t) {
  const auto ms = to_unix_ms(t);
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  int millis = static_cast<int>(ms % 1000);
  if (millis < 0) {
    millis += 1000;
    secs -= 1;
  }
  return format_utc(secs, millis);
}

std::string format_rfc3339_seconds(std::chrono::sys_seconds t) {
  return format_utc(static_cast<std::time_t>(t.time_since_epoch().count()), -1);
}

Result<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text) {
  std::tm tm{};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0, consumed = 0;
  const std::string s(text);
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &year, &mon, &day, &hour, &min, &sec,
                  &consumed) != 6) {
    return fail(Errc::data, "not an RFC 3339 time ('" + s + "')");
  }
  std::int64_t millis = 0;
  std::size_t pos = static_cast<std::size_t>(consumed);
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    int digits = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (digits < 3) millis = millis * 10 + (s[pos] - '0');
      ++digits;
      ++pos;
    }
    for (; digits < 3; ++digits) millis *= 10;
  }
  if (pos + 1 != s.size() || (s[pos] != 'Z' && s[pos] != 'z')) {
    return fail(Errc::data, "not a UTC RFC 3339 time ('" + s + "'); expected a trailing Z");
  }
  const std::chrono::year_month_day date{std::chrono::year{year}, std::chrono::month{static_cast<unsigned>(mon)},
                                        std::chrono::day{static_cast<unsigned>(day)}};
  if (!date.ok() || hour < 0 || hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 59) {
    return fail(Errc::data, "not an RFC 3339 time ('" + s + "'): no such date or time of day");
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  const std::time_t secs = ::timegm(&tm);
  return from_unix_ms(static_cast<std::int64_t>(secs) * 1000 + millis);
}

}  // namespace cairn
