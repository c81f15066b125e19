// The sealed base (issue 16): a boot pinned to one base OS module by its OCI manifest digest
// (cairn.base=NAME@sha256:...) fetches exactly that module from the configured registry,
// verifies it like any module, mounts it with the node's desired set as the union at
// <root>/sysroot (a direct mount, never the gen-N symlink) and hands over to /init, which
// moves /run, /persist, /dev, /proc and /sys into it and switch_roots. Anything else is
// refused: a base the registry does not have, one whose bytes are not the pinned digest, one
// the trust policy refuses. Then nothing is left mounted at /sysroot and /init does not
// switch_root (a compromised registry cannot swap the OS).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "agent/boot/bootstrap.hpp"
#include "agent/boot/stages.hpp"
#include "agent/config.hpp"
#include "agent/modules/attachments.hpp"
#include "common/clock.hpp"
#include "common/protocol/messages.hpp"
#include "common/result.hpp"

namespace cairn::agent::boot {

// Where the union is mounted for switch_root, relative to the agent's root.
inline constexpr std::string_view kSysroot = "sysroot";
// What `boot` tells /init after a sealed modules stage: "switch-root <sysroot>\n".
inline constexpr std::string_view kHandoffFile = "run/cairn/boot-handoff";

// The set to attach: the sealed base first (required, so update() refuses the whole change,
// nothing mounted, when it does not fetch or verify), then the desired set from control
// without any module of the base's name (control cannot replace the pinned base); those go to
// `dropped`.
std::vector<protocol::ModuleRef> sealed_set(const BaseRef& base, const std::vector<protocol::ModuleRef>& desired,
                                            std::vector<std::string>& dropped);

// Whether the attached set holds exactly the pinned base: Errc::refused naming the base and
// why (failed with `failed_reason`, missing, attached from another digest), else ok.
// `failed` are the desired modules update() left out with their reasons.
Status check_sealed_base(const BaseRef& base, const std::vector<modules::AttachedModule>& attached,
                         const std::vector<modules::Exclusion>& failed);

// The event control gets when its desired set names the sealed base's module with another
// digest (kind module.base_override_refused, warning; its id is stable per desired digest, so
// control shows it once however many boots report it): the message names both refs.
protocol::Event base_override_event(const BaseRef& base, const protocol::ModuleRef& desired, const std::string& now_rfc3339);

// The attach of a sealed boot over any way of fetching (the stage gives the registry's, tests
// a fake): the sealed set (the base required in it), a module.base_override_refused event
// recorded (<persist>/cairn/modules/events.pending) and logged for each module of the base's
// name control desired, update(), then check_sealed_base. A base that is not the pinned digest
// is never mounted: the pinned one is fetched by digest and verified before any mount, and
// when it fails the change fails with nothing mounted (a registry that did not answer keeps
// its retryable code). What this mounted stays mounted on a refusal: the caller tears it down.
Result<modules::UpdateOutcome> attach_sealed(modules::ModulesEnv& env, modules::Mounter& mounter,
                                             const modules::FetchFn& fetch, const BaseRef& base,
                                             const std::vector<protocol::ModuleRef>& desired, const std::string& now_rfc3339);

// The modules stage with a sealed base: asks control once for the desired set (one
// heartbeat, as the service's turn does; the last stored set when control does not answer),
// attaches base + desired set through modules::update at <root>/sysroot, checks the base.
// A refusal unmounts whatever it mounted. A registry that did not answer keeps its
// (retryable) code so the stage runner tries again.
Result<StageOutcome> sealed_modules_stage(const AgentConfig& config, const BaseRef& base, const Clock& clock);

// Writes kHandoffFile for /init (atomically).
Status write_handoff(const AgentConfig& config);

}  // namespace cairn::agent::boot
