// Identity from the AWS EC2 instance metadata service, IMDSv2 (session token first).
#pragma once

#include "identity/source.hpp"

namespace cairn::identity {

class AwsSource final : public Source {
 public:
  [[nodiscard]] std::string_view name() const override { return "aws"; }
  [[nodiscard]] bool is_cloud() const override { return true; }
  SourceResult probe(Context& context) override;
};

}  // namespace cairn::identity
