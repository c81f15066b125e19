// How the modules commands (attach, detach, modules) show the attached set and the union.
#pragma once

#include <string>

#include "agent/modules/attachments.hpp"
#include "common/json.hpp"

namespace cairn::agent::cli {

Json attached_json(const modules::AttachedModule& m, bool mounted);
Json change_details(const modules::ChangeOutcome& change);
std::string change_human(const modules::ChangeOutcome& change);

}  // namespace cairn::agent::cli
