// Identity from the kernel command line: cairn.id=<uuid> (set by the boot loader or iPXE).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "identity/source.hpp"

namespace cairn::identity {

// Splits like the kernel's next_arg() (lib/cmdline.c): blanks separate words, double quotes
// group blanks into a word and are removed.
std::vector<std::string> tokenize_cmdline(std::string_view cmdline);

// The value of the LAST key=value word. Later words win, as the kernel's own parameter
// parsing lets a later `foo=` override an earlier one (boot loaders append, so the last
// word is the most specific). A bare `key` is the empty value. Words after a lone `--` are
// init's arguments, not the kernel's, and are never read.
std::optional<std::string> cmdline_value(std::string_view cmdline, std::string_view key);

class CmdlineSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "cmdline"; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
