#include "identity/sources/cmdline.hpp"

#include "common/fs.hpp"

namespace cairn::identity {
namespace {

constexpr std::size_t kCmdlineMaxBytes = 64 * 1024;  // COMMAND_LINE_SIZE is at most a few KiB

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\0'; }

}  // namespace

std::vector<std::string> tokenize_cmdline(std::string_view cmdline) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  bool quoted = false;
  for (char c : cmdline) {
    if (c == '"') {
      quoted = !quoted;
      in_word = true;
      continue;
    }
    if (is_blank(c) && !quoted) {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    word.push_back(c);
    in_word = true;
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

std::optional<std::string> cmdline_value(std::string_view cmdline, std::string_view key) {
  std::optional<std::string> value;
  for (const auto& word : tokenize_cmdline(cmdline)) {
    const std::string_view w(word);
    if (w == "--") break;  // the rest belongs to init (kernel/params.c, parse_args)
    if (w == key) {
      value = std::string();
    } else if (w.size() > key.size() && w.starts_with(key) && w[key.size()] == '=') {
      value = std::string(w.substr(key.size() + 1));
    }
  }
  return value;
}

SourceResult CmdlineSource::probe(Context& context) {
  const auto path = context.root() / "proc/cmdline";
  auto content = read_file_if_exists(path, kCmdlineMaxBytes);
  if (!content) return SourceResult::failed(content.error());
  if (!*content) return SourceResult::skipped("no " + path.string() + " to read");
  const auto value = cmdline_value(**content, "cairn.id");
  if (!value) return SourceResult::skipped("no cairn.id= on the kernel command line");
  auto uuid = parse_identity_uuid(*value);
  if (!uuid) {
    return SourceResult::failed("kernel command line cairn.id=: " + uuid.error().message +
                                "; fix the boot loader entry");
  }
  Identity id;
  id.uuid = *uuid;
  id.platform = context.hint().platform();
  return SourceResult::answered(std::move(id), "cairn.id= on the kernel command line");
}

}  // namespace cairn::identity
