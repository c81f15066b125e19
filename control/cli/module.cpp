// `cairn-control module add|list|assign|unassign`: the module catalog and its assignments
// through the admin API (issue 14). `add` takes what the operator has after cairn-module
// pack/sign/push: the pushed reference (the manifest and signatures are read from the
// registry, the tag pinned to its digest) or the module manifest file with its signature and
// the reference it was pushed to. The service verifies the signature with --trust-key before
// the module enters the catalog. Tables by default, --json for scripts.
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "common/clock.hpp"
#include "common/fs.hpp"
#include "common/module/manifest.hpp"
#include "common/module/policy.hpp"
#include "common/module/signature.hpp"
#include "common/oci/module_artifact.hpp"
#include "common/oci/registry.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"

namespace cairn::control::cli {
namespace {

constexpr std::size_t kMaxKeyBytes = 64 * 1024;

struct AddOptions {
  std::string source;                   // REGISTRY/REPO:TAG, REGISTRY/REPO@sha256:..., or NAME.manifest.json
  std::vector<std::string> signatures;  // .sig files
  std::string reference;                // with a manifest file: where it was pushed
  std::vector<std::string> trust_keys;  // PEM files
  bool required = false;
  bool plain_http = false;
  std::string username;
  std::string ca_file;
};

struct AssignOptions {
  std::string module;  // NAME@VERSION or, for unassign, an assignment id
  std::string node;
  std::string selector;
};

Result<oci::ResolvedModule> resolve(const AddOptions& o, const oci::Reference& ref) {
  oci::RegistryOptions options;
  options.scheme = o.plain_http ? "http" : "https";
  options.username = o.username;
  if (const char* p = std::getenv("CAIRN_REGISTRY_PASSWORD")) options.password = p;
  options.tls.ca_file = o.ca_file;
  auto http = oci::make_registry_http(options);
  oci::Registry registry(*http, ref.registry, options);
  auto resolved = oci::resolve_module(registry, ref);
  if (!resolved) return fail(resolved.error().with_context("module add " + ref.str()));
  return resolved;
}

// The body of POST /v1/admin/modules from the command line (reads files, asks the registry).
Result<Json> add_body(const AddOptions& o) {
  Json body = {{"required", o.required}, {"signatures", Json::array()}, {"trust_keys", Json::array()}};
  if (o.trust_keys.empty()) {
    return fail(Errc::usage, "module add " + o.source + ": no --trust-key",
                "pass the public key(s) allowed to sign this module, e.g. --trust-key signer.pub");
  }
  for (const auto& path : o.trust_keys) {
    auto pem = read_file(path, kMaxKeyBytes);
    if (!pem) return fail(pem.error().with_context("--trust-key"));
    if (auto key = module::load_public_key(path); !key) return fail(key.error().with_context("--trust-key " + path));
    body["trust_keys"].push_back(*pem);
  }
  for (const auto& path : o.signatures) {
    auto sig = read_file(path, module::kMaxSignatureBytes);
    if (!sig) return fail(sig.error().with_context("--signature"));
    body["signatures"].push_back(*sig);
  }

  std::error_code ec;
  if (std::filesystem::is_regular_file(o.source, ec)) {
    // The manifest file: its signature beside it unless given, the pushed reference required.
    auto manifest = read_file(o.source, module::kMaxManifestBytes);
    if (!manifest) return fail(manifest.error());
    auto parsed = module::parse_manifest(*manifest, o.source);
    if (!parsed) return fail(parsed.error());
    if (o.signatures.empty()) {
      std::string sig_path = o.source;
      constexpr std::string_view kSuffix = ".manifest.json";
      if (sig_path.ends_with(kSuffix)) sig_path.resize(sig_path.size() - kSuffix.size());
      sig_path += ".sig";
      if (std::filesystem::is_regular_file(sig_path, ec)) {
        auto sig = read_file(sig_path, module::kMaxSignatureBytes);
        if (!sig) return fail(sig.error());
        body["signatures"].push_back(*sig);
      }
    }
    if (o.reference.empty()) {
      return fail(Errc::usage, "module add " + o.source + ": a manifest file needs --reference",
                  "give where it was pushed: --reference REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:... (cairn-module push prints it)");
    }
    auto ref = oci::parse_reference(o.reference);
    if (!ref) return fail(ref.error().with_context("--reference"));
    if (ref->digest.empty()) {
      // Pin the tag now, and make sure it holds this manifest.
      auto resolved = resolve(o, *ref);
      if (!resolved) return fail(resolved.error());
      auto there = module::parse_manifest(resolved->module_manifest, ref->str());
      if (!there || module::canonical_bytes(*there) != module::canonical_bytes(*parsed)) {
        return fail(Errc::data, "--reference " + ref->str() + " holds another module than " + o.source,
                    "push this manifest there (cairn-module push) or give the reference it was pushed to");
      }
      ref->tag.clear();
      ref->digest = resolved->manifest_digest;
    }
    body["reference"] = ref->str();
    body["manifest"] = *manifest;
    return body;
  }

  if (!o.reference.empty()) {
    return fail(Errc::usage, "module add " + o.source + ": --reference is for a manifest file",
                "give either a pushed reference or a manifest file with --reference");
  }
  auto ref = oci::parse_reference(o.source);
  if (!ref) {
    return fail(Errc::usage, "module add '" + o.source + "': neither a file nor a reference (" + ref.error().message + ")",
                "give REGISTRY/REPO:TAG as pushed by cairn-module push, or NAME.manifest.json with --reference");
  }
  auto resolved = resolve(o, *ref);
  if (!resolved) return fail(resolved.error());
  for (const auto& sig : resolved->signatures) body["signatures"].push_back(sig);
  ref->tag.clear();
  ref->digest = resolved->manifest_digest;
  body["reference"] = ref->str();
  body["manifest"] = resolved->module_manifest;
  return body;
}

std::string time_cell(const Json& j, std::string_view key) {
  const auto it = j.find(std::string(key));
  if (it == j.end() || !it->is_number_integer()) return "-";
  return format_rfc3339(from_unix_ms(it->get<std::int64_t>()));
}

std::string list_cell(const Json& j, std::string_view key) {
  const auto it = j.find(std::string(key));
  if (it == j.end() || !it->is_array() || it->empty()) return "-";
  std::string out;
  for (const auto& e : *it) out += (out.empty() ? "" : ",") + (e.is_string() ? e.get<std::string>() : dump_json(e));
  return out;
}

std::string target_cell(const Json& a) {
  if (a.contains("node_id") && a["node_id"].is_string()) return "node " + a["node_id"].get<std::string>();
  return "selector " + cell(a, "selector");
}

Status add(const AdminOptions& admin, const AddOptions& o) {
  auto body = add_body(o);
  if (!body) return fail(body.error());
  auto answer = admin_call(admin, "POST", "/v1/admin/modules", &*body);
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::cout << "added " << cell(*answer, "name") << "@" << cell(*answer, "version") << " (priority "
            << cell(*answer, "priority") << ", required " << cell(*answer, "required") << ")\n"
            << "reference:       " << cell(*answer, "reference") << "\n"
            << "manifest digest: " << cell(*answer, "manifest_digest") << "\n"
            << "image digest:    " << cell(*answer, "image_digest") << "\n"
            << "fs-verity:       " << cell(*answer, "fsverity_digest") << "\n"
            << "depends on:      " << list_cell(*answer, "dependencies") << "\n";
  return {};
}

Status list(const AdminOptions& admin) {
  auto answer = admin_call(admin, "GET", "/v1/admin/modules");
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : answer->value("modules", Json::array())) {
    rows.push_back({cell(m, "name"), cell(m, "version"), cell(m, "priority"), cell(m, "required"),
                    list_cell(m, "dependencies"), cell(m, "image_digest"), cell(m, "reference"), time_cell(m, "added_at_ms")});
  }
  print_table({"NAME", "VERSION", "PRIORITY", "REQUIRED", "DEPENDS", "IMAGE DIGEST", "REFERENCE", "ADDED"}, rows);
  rows.clear();
  for (const auto& a : answer->value("assignments", Json::array())) {
    rows.push_back({cell(a, "id"), cell(a, "module"), target_cell(a), time_cell(a, "created_at_ms")});
  }
  std::cout << "\nassignments:\n";
  print_table({"ID", "MODULE", "TARGET", "CREATED"}, rows);
  return {};
}

Result<Json> parse_selector(const std::string& text) {
  Json sel = Json::object();
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    if (item.empty() || eq == std::string::npos || eq == 0) {
      return fail(Errc::usage, "--selector: '" + item + "' is not key=value", "e.g. --selector zone=a,role=db");
    }
    sel[item.substr(0, eq)] = item.substr(eq + 1);
  }
  if (sel.empty()) return fail(Errc::usage, "--selector: no labels", "e.g. --selector zone=a,role=db");
  return sel;
}

// {"node"} or {"selector"} from --node / --selector (exactly one).
Result<Json> target(const AssignOptions& o, std::string_view command) {
  if (o.node.empty() == o.selector.empty()) {
    return fail(Errc::usage, std::string(command) + " " + o.module + ": give exactly one of --node and --selector");
  }
  if (!o.node.empty()) {
    auto id = parse_uuid(o.node);
    if (!id) return fail(Errc::usage, "--node '" + o.node + "': " + id.error().message, "pass the node's UUID (see 'node list')");
    return Json{{"node", id->str()}};
  }
  auto sel = parse_selector(o.selector);
  if (!sel) return fail(sel.error());
  return Json{{"selector", *sel}};
}

Status check_module_arg(const std::string& module) {
  const auto at = module.find('@');
  if (at == std::string::npos || at == 0 || at + 1 == module.size()) {
    return fail(Errc::usage, "module '" + module + "': expected NAME@VERSION", "e.g. cairn-control module assign web@1.2 --node ID");
  }
  return {};
}

Status assign(const AdminOptions& admin, const AssignOptions& o) {
  if (auto ok = check_module_arg(o.module); !ok) return ok;
  auto body = target(o, "module assign");
  if (!body) return fail(body.error());
  (*body)["module"] = o.module;
  auto answer = admin_call(admin, "POST", "/v1/admin/modules/assignments", &*body);
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
  } else {
    std::cout << "assigned " << o.module << " to " << target_cell(*answer) << " (assignment " << cell(*answer, "id")
              << "): matching nodes receive it with their next heartbeat\n";
  }
  return {};
}

Status unassign(const AdminOptions& admin, const AssignOptions& o) {
  std::vector<std::string> ids;
  if (parse_uuid(o.module)) {
    if (!o.node.empty() || !o.selector.empty()) {
      return fail(Errc::usage, "module unassign " + o.module + ": --node/--selector go with NAME@VERSION, not an assignment id");
    }
    ids.push_back(o.module);
  } else {
    if (auto ok = check_module_arg(o.module); !ok) {
      return fail(Errc::usage, "module unassign '" + o.module + "': expected an assignment id or NAME@VERSION",
                  "see cairn-control module list");
    }
    auto want = target(o, "module unassign");
    if (!want) return fail(want.error());
    auto listed = admin_call(admin, "GET", "/v1/admin/modules");
    if (!listed) return fail(listed.error());
    for (const auto& a : listed->value("assignments", Json::array())) {
      if (a.value("module", "") != o.module) continue;
      const bool same = want->contains("node") ? a.value("node_id", Json()) == (*want)["node"]
                                               : (!a.contains("node_id") || a["node_id"].is_null()) &&
                                                     a.value("selector", Json::object()) == (*want)["selector"];
      if (same) ids.push_back(a.value("id", ""));
    }
    if (ids.empty()) {
      return fail(Errc::data, "no assignment of " + o.module + " to " + (want->contains("node") ? "node " + o.node : "selector " + o.selector),
                  "see cairn-control module list");
    }
  }
  Json done = Json::array();
  for (const auto& id : ids) {
    auto answer = admin_call(admin, "POST", "/v1/admin/modules/assignments/" + id + "/delete");
    if (!answer) return fail(answer.error());
    done.push_back(*answer);
  }
  if (admin.json) {
    std::cout << dump_json(Json{{"deleted", done}}, 2) << "\n";
  } else {
    for (const auto& id : ids) std::cout << "assignment " << id << " removed: its nodes drop the module on their next update\n";
  }
  return {};
}

// modules (h-modpolicy): `module policy set FILE` / `module policy show`.
void print_policy(const AdminOptions& admin, const Json& answer, std::string_view verb) {
  if (admin.json) {
    std::cout << dump_json(answer, 2) << "\n";
    return;
  }
  if (!answer.contains("policy") || answer["policy"].is_null()) {
    std::cout << "no module trust policy is set: nodes trust only the keys of their own configuration\n";
    return;
  }
  auto signed_policy = module::signed_policy_from_json(answer["policy"]);
  auto policy = signed_policy ? module::parse_policy(signed_policy->policy_text) : Result<module::ModulePolicy>(fail(signed_policy.error()));
  if (!policy) {
    std::cout << "module trust policy (unreadable: " << policy.error().message << ")\n";
    return;
  }
  std::cout << "module trust policy version " << policy->version << " " << verb << ", signed by policy key "
            << signed_policy->signature.key_id << "\n";
  // h-polexpiry: nodes judge the expiry by their own clocks; this one is only the operator's.
  if (!policy->expires) {
    std::cout << "expires: never (a diskless node could be handed this policy again after a newer one; "
                 "cairn-module policy sign --expires bounds that)\n";
  } else if (module::policy_expired(*policy, SystemClock::instance().now())) {
    std::cout << "expires: " << module::format_policy_expiry(*policy->expires)
              << " (EXPIRED: nodes refuse it and trust only their own configuration's keys; sign a newer one)\n";
  } else {
    std::cout << "expires: " << module::format_policy_expiry(*policy->expires) << " (re-sign and set a newer one before then)\n";
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : policy->rules) {
    std::string keys;
    for (const auto& k : r.key_ids) keys += (keys.empty() ? "" : ",") + k;
    rows.push_back({r.pattern, keys.empty() ? "-" : keys});
  }
  print_table({"MODULES", "KEYS"}, rows);
  std::cout << "nodes accept it only if they pin that policy key (modules.policy_keys)\n";
}

Status policy_set(const AdminOptions& admin, const std::string& file) {
  auto text = read_file(file, module::kMaxSignedPolicyBytes);
  if (!text) return fail(text.error().with_context("module policy set"));
  auto signed_policy = module::parse_signed_policy(*text);
  if (!signed_policy) {
    return fail(Error{Errc::data, file + ": " + signed_policy.error().message, "sign the policy first: cairn-module policy sign POLICY.json --key KEY"});
  }
  if (auto policy = module::parse_policy(signed_policy->policy_text); !policy) return fail(policy.error().with_context(file));
  const Json body = {{"policy", module::signed_policy_json(*signed_policy)}};
  auto answer = admin_call(admin, "POST", "/v1/admin/modules/policy", &body);
  if (!answer) return fail(answer.error());
  print_policy(admin, *answer, "set: nodes receive it with their next heartbeat");
  return {};
}

Status policy_show(const AdminOptions& admin) {
  auto answer = admin_call(admin, "GET", "/v1/admin/modules/policy");
  if (!answer) return fail(answer.error());
  print_policy(admin, *answer, "is set");
  return {};
}

}  // namespace

void add_module(CLI::App& app, int& exit_code) {
  auto* module = app.add_subcommand("module", "Verified modules: the catalog and which nodes run what");
  module->require_subcommand(1);

  auto admin_add = std::make_shared<AdminOptions>();
  auto ao = std::make_shared<AddOptions>();
  auto* add_cmd = module->add_subcommand(
      "add", "Add a signed module: cairn-control module add REGISTRY/REPO:TAG --trust-key KEY.pub "
             "(or NAME.manifest.json --reference REGISTRY/REPO@sha256:...)");
  add_admin_options(*add_cmd, *admin_add);
  add_cmd->add_option("SOURCE", ao->source, "The pushed reference, or the module manifest file (cairn-module pack)")->required();
  add_cmd->add_option("--trust-key", ao->trust_keys, "A public key allowed to sign this module (PEM file, repeatable)");
  add_cmd->add_option("--signature", ao->signatures, "A signature file (default: NAME.sig beside the manifest)");
  add_cmd->add_option("--reference", ao->reference, "With a manifest file: where it was pushed (REGISTRY/REPO:TAG or @sha256:...)");
  add_cmd->add_flag("--required", ao->required, "Nodes refuse a change that would leave this module out");
  add_cmd->add_flag("--plain-http", ao->plain_http, "Talk http to the registry (a registry on loopback)");
  add_cmd->add_option("--username", ao->username, "Registry user (password in CAIRN_REGISTRY_PASSWORD)");
  add_cmd->add_option("--ca-file", ao->ca_file, "PEM bundle the registry's certificate must chain to");
  on_run(add_cmd, admin_add, "module add", exit_code, [admin_add, ao] { return add(*admin_add, *ao); });

  auto admin_list = std::make_shared<AdminOptions>();
  auto* list_cmd = module->add_subcommand("list", "List the catalog's modules and their assignments");
  add_admin_options(*list_cmd, *admin_list);
  on_run(list_cmd, admin_list, "module list", exit_code, [admin_list] { return list(*admin_list); });

  auto admin_assign = std::make_shared<AdminOptions>();
  auto as = std::make_shared<AssignOptions>();
  auto* assign_cmd = module->add_subcommand("assign", "Assign NAME@VERSION to a node (--node ID) or to every node whose labels match (--selector k=v,...)");
  add_admin_options(*assign_cmd, *admin_assign);
  assign_cmd->add_option("MODULE", as->module, "NAME@VERSION")->required();
  assign_cmd->add_option("--node", as->node, "The node (UUID)");
  assign_cmd->add_option("--selector", as->selector, "Labels a node must have (as stored at enrollment): k=v,k2=v2");
  on_run(assign_cmd, admin_assign, "module assign", exit_code, [admin_assign, as] { return assign(*admin_assign, *as); });

  auto admin_unassign = std::make_shared<AdminOptions>();
  auto us = std::make_shared<AssignOptions>();
  auto* unassign_cmd = module->add_subcommand("unassign", "Remove an assignment: by its id, or NAME@VERSION with the same --node/--selector");
  add_admin_options(*unassign_cmd, *admin_unassign);
  unassign_cmd->add_option("ASSIGNMENT", us->module, "Assignment id (see module list) or NAME@VERSION")->required();
  unassign_cmd->add_option("--node", us->node, "With NAME@VERSION: the node it was assigned to");
  unassign_cmd->add_option("--selector", us->selector, "With NAME@VERSION: the selector it was assigned with");
  on_run(unassign_cmd, admin_unassign, "module unassign", exit_code,
         [admin_unassign, us] { return unassign(*admin_unassign, *us); });

  // modules (h-modpolicy)
  auto* policy = module->add_subcommand("policy", "The module trust policy nodes receive (signed with cairn-module policy sign)");
  policy->require_subcommand(1);
  auto admin_policy_set = std::make_shared<AdminOptions>();
  auto policy_file = std::make_shared<std::string>();
  auto* set_cmd = policy->add_subcommand("set", "Hand a signed policy to every node with its desired set (its version must not go back)");
  add_admin_options(*set_cmd, *admin_policy_set);
  set_cmd->add_option("FILE", *policy_file, "The signed policy (cairn-module policy sign)")->required();
  on_run(set_cmd, admin_policy_set, "module policy set", exit_code,
         [admin_policy_set, policy_file] { return policy_set(*admin_policy_set, *policy_file); });
  auto admin_policy_show = std::make_shared<AdminOptions>();
  auto* show_cmd = policy->add_subcommand("show", "Show the module trust policy control distributes");
  add_admin_options(*show_cmd, *admin_policy_show);
  on_run(show_cmd, admin_policy_show, "module policy show", exit_code, [admin_policy_show] { return policy_show(*admin_policy_show); });
}

}  // namespace cairn::control::cli
