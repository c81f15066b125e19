#include "identity/sources/dmi.hpp"

#include "common/fs.hpp"

namespace cairn::identity {

// The SMBIOS system UUID, which the kernel exports readable by root only. Cheap boards ship
// all zeros or all FF here (SMBIOS 3.x, 7.2.1: "not present" / "not set"); both are refused.
SourceResult DmiSource::probe(Context& context) {
  const auto path = context.root() / "sys/class/dmi/id/product_uuid";
  auto content = read_file_if_exists(path, 4096);
  if (!content) {
    return SourceResult::failed(
        "DMI product_uuid: " + content.error().message + "; run as root to read it",
        content.error().code);
  }
  if (!*content) return SourceResult::skipped("no DMI product_uuid (" + path.string() + ")");
  auto uuid = parse_identity_uuid(**content);
  if (!uuid) return SourceResult::failed("DMI product_uuid: " + uuid.error().message);
  Identity id;
  id.uuid = *uuid;
  id.platform = context.hint().platform();
  return SourceResult::answered(std::move(id), "DMI product_uuid");
}

}  // namespace cairn::identity
