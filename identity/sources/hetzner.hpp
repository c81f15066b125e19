// Identity from the Hetzner Cloud server metadata (/hetzner/v1/metadata, YAML).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class HetznerSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "hetzner"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
