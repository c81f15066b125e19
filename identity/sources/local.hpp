// Identity kept on the node: <persist>/cairn/identity.json, created once with a random
// UUID and stable afterwards. The last source: it always answers unless persist is unwritable.
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class LocalSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "local"; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
