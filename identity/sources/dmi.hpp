// Identity from the firmware: DMI/SMBIOS product_uuid under /sys/class/dmi/id.
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class DmiSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "dmi"; }
  [[nodiscard]] bool is_cloud() const override { return false; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
