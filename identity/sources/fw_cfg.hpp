// Identity from QEMU's fw-cfg entry opt/org.cairn/instance_uuid (qemu -fw_cfg name=...,string=<uuid>).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class FwCfgSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "fw_cfg"; }
  [[nodiscard]] bool is_cloud() const override { return false; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
