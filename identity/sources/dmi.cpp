#include "identity/sources/dmi.hpp"

#include "common/fs.hpp"
#include "identity/placeholders.hpp"
#include "identity/text.hpp"

namespace cairn::identity {

// The SMBIOS system UUID, which the kernel exports readable by root only. Firmware that
// never had one programmed ships a placeholder: all zeros or all FF (SMBIOS 3.x, 7.2.1:
// "not present" / "not set"), a counting pattern (03000200-0400-0500-0006-000700080009),
// or a string ("Not Settable"). Those fall through to the next source as skips: the
// firmware says it has no identity, which is no error of the host.
SourceResult DmiSource::probe(Context& context) {
  const auto path = context.root() / "sys/class/dmi/id/product_uuid";
  auto content = read_file_if_exists(path, 4096);
  if (!content) {
    return SourceResult::failed(
        "DMI product_uuid: " + content.error().message + "; run as root to read it",
        content.error().code);
  }
  if (!*content) return SourceResult::skipped("no DMI product_uuid (" + path.string() + ")");
  auto uuid = parse_uuid(**content);
  if (!uuid && is_placeholder_dmi_string(**content)) {
    std::string text = valid_utf8(**content);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return SourceResult::skipped("DMI product_uuid is '" + text.substr(0, 64) +
                                 "', a firmware placeholder, not an identity");
  }
  if (!uuid) return SourceResult::failed("DMI product_uuid: " + uuid.error().message);
  if (auto why = placeholder_uuid_reason(*uuid)) {
    return SourceResult::skipped("DMI product_uuid " + uuid->str() +
                                 " is a firmware placeholder (" + *why + "), not an identity");
  }
  Identity id;
  id.uuid = *uuid;
  id.platform = context.hint().platform();
  return SourceResult::answered(std::move(id), "DMI product_uuid");
}

}  // namespace cairn::identity
