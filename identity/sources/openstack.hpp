// Identity from the OpenStack Nova metadata service (/openstack/latest/meta_data.json).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class OpenStackSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "openstack"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
