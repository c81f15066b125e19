// Values that firmware ships in place of a real one. A board whose SMBIOS system UUID is
// 03000200-0400-0500-0006-000700080009 shares it with every other board of its batch, so
// it cannot name a machine; a chassis asset tag "To be filled by O.E.M." says nothing about
// where the machine runs. Both are recognised by their shape, not from one literal.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/uuid.hpp"

namespace cairn::identity {

// Why `uuid` is a firmware placeholder rather than an identity ("every byte is 0x00",
// "sequential 16-bit words", ...), or nullopt for a UUID that can name a machine. The
// bytes are checked as written and with the first three fields byte-swapped, since
// SMBIOS 2.6+ stores those fields little-endian and firmware fills them either way.
std::optional<std::string> placeholder_uuid_reason(const Uuid& uuid);

// `uuid` with its first three fields byte-swapped: the other reading of an SMBIOS UUID
// (SMBIOS 2.6+ stores them little-endian; Azure's vmId is the DMI UUID read that way on
// Generation 1 VMs).
Uuid smbios_byte_swapped(const Uuid& uuid);

// True for a DMI string that firmware vendors leave as a placeholder ("Not Settable",
// "Not Specified", "None", "Default string", "To be filled by O.E.M.", "0000000", ...):
// compared on letters and digits only, case-insensitively.
bool is_placeholder_dmi_string(std::string_view value);

}  // namespace cairn::identity
