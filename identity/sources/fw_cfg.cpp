#include "identity/sources/fw_cfg.hpp"

#include "common/fs.hpp"

namespace cairn::identity {
namespace {

// QEMU exposes `-fw_cfg name=opt/org.cairn/instance_uuid,string=<uuid>` through the
// qemu_fw_cfg driver at this path (Documentation/ABI/testing/sysfs-firmware-qemu_fw_cfg).
constexpr std::string_view kEntry = "opt/org.cairn/instance_uuid";
constexpr std::size_t kMaxBytes = 4096;

}  // namespace

SourceResult FwCfgSource::probe(Context& context) {
  const auto path =
      context.root() / ("sys/firmware/qemu_fw_cfg/by_name/" + std::string(kEntry) + "/raw");
  auto content = read_file_if_exists(path, kMaxBytes);
  if (!content) {
    return SourceResult::failed("fw-cfg entry " + std::string(kEntry) + ": " +
                                content.error().message);
  }
  if (!*content) return SourceResult::skipped("no fw-cfg entry " + std::string(kEntry));
  auto uuid = parse_identity_uuid(**content);
  if (!uuid) {
    return SourceResult::failed("fw-cfg entry " + std::string(kEntry) + ": " +
                                uuid.error().message + "; fix the -fw_cfg string");
  }
  Identity id;
  id.uuid = *uuid;
  id.platform = "qemu";
  return SourceResult::answered(std::move(id), "fw-cfg entry " + std::string(kEntry));
}

}  // namespace cairn::identity
