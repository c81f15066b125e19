// Identity from the Azure Instance Metadata Service (Metadata: true, api-version).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class AzureSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "azure"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
