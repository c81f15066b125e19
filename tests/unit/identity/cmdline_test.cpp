#include <doctest/doctest.h>

#include "identity/sources/cmdline.hpp"

using cairn::identity::cmdline_value;
using cairn::identity::tokenize_cmdline;

TEST_CASE("the kernel command line is split on blanks, quotes group and are removed") {
  struct Case {
    const char* line;
    std::vector<std::string> words;
  };
  const Case cases[] = {
      {"", {}},
      {"   \n", {}},
      {"quiet splash", {"quiet", "splash"}},
      {"  a\tb  c\n", {"a", "b", "c"}},
      {"x=\"two words\" y", {"x=two words", "y"}},
      {"\"x=a b\" y", {"x=a b", "y"}},
      {"x=\"\"", {"x="}},
      {"rd.info -- init-arg", {"rd.info", "--", "init-arg"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.line);
    CHECK(tokenize_cmdline(c.line) == c.words);
  }
}

TEST_CASE("cairn.id= takes the last occurrence, as the kernel lets a later parameter win") {
  struct Case {
    const char* line;
    std::optional<std::string> value;
  };
  const Case cases[] = {
      {"quiet", std::nullopt},
      {"cairn.id=a", "a"},
      {"cairn.id=a console=ttyS0 cairn.id=b", "b"},
      {"cairn.id=\"b\"", "b"},
      {"cairn.id=", ""},
      {"cairn.id", ""},
      {"cairn.identity=a xcairn.id=b", std::nullopt},
      {"cairn.id=a=b", "a=b"},
      // After a lone "--" the words are init's (kernel/params.c parse_args stops there).
      {"quiet -- cairn.id=a", std::nullopt},
      {"cairn.id=a -- cairn.id=b", "a"},
      {"cairn.id=a --x cairn.id=b", "b"},  // only a lone "--" ends the kernel's words
  };
  for (const auto& c : cases) {
    CAPTURE(c.line);
    CHECK(cmdline_value(c.line, "cairn.id") == c.value);
  }
}
