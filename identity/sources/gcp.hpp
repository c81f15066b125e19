// Identity from the Google Compute Engine metadata server (Metadata-Flavor: Google).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class GcpSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "gcp"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
