// Identity from the DigitalOcean droplet metadata API (/metadata/v1.json).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class DigitalOceanSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "digitalocean"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
