// `cairn-control node list|show|revoke`: the fleet through the admin API.
#include <iostream>
#include <memory>

#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"

namespace cairn::control::cli {
namespace {

Status list(const AdminOptions& admin) {
  auto answer = admin_call(admin, "GET", "/v1/admin/nodes");
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("nodes") && (*answer)["nodes"].is_array()) {
    for (const auto& n : (*answer)["nodes"]) {
      rows.push_back({cell(n, "id"), cell(n, "state"), cell(n, "last_heartbeat"), cell(n, "cert_not_after"),
                      cell(n, "platform"), cell(n, "labels")});
    }
  }
  print_table({"ID", "STATE", "LAST HEARTBEAT", "CERT NOT AFTER", "PLATFORM", "LABELS"}, rows);
  return {};
}

Status show(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "GET", "/v1/admin/nodes/" + id);
  if (!answer) return fail(answer.error());
  if (admin.json || !answer->is_object()) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  // Scalars as "key: value", nested objects and lists indented JSON below their key.
  std::size_t width = 0;
  for (const auto& [k, v] : answer->items()) width = std::max(width, k.size());
  for (const auto& [k, v] : answer->items()) {
    if (v.is_structured() && !(v.is_object() && k == "labels")) continue;
    std::cout << k << ":" << std::string(width - k.size() + 1, ' ') << cell(*answer, k) << "\n";
  }
  for (const auto& [k, v] : answer->items()) {
    if (!v.is_structured() || (v.is_object() && k == "labels")) continue;
    std::cout << k << ":\n";
    std::string text = dump_json(v, 2);
    std::string indented = "  ";
    for (char c : text) {
      indented += c;
      if (c == '\n') indented += "  ";
    }
    std::cout << indented << "\n";
  }
  return {};
}

Status revoke(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "POST", "/v1/admin/nodes/" + id + "/revoke");
  if (!answer) return fail(answer.error());
  if (admin.json) std::cout << dump_json(*answer, 2) << "\n";
  else std::cout << "node " << id << " revoked: its certificates are refused from now on\n";
  return {};
}

Status allow_reenroll(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "POST", "/v1/admin/nodes/" + id + "/allow-reenroll");
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
  } else {
    std::cout << "node " << id << " may enroll again once, with any valid token, until "
              << cell(*answer, "reenroll_allowed_until") << "\n";
  }
  return {};
}

}  // namespace

void add_node(CLI::App& app, int& exit_code) {
  auto* node = app.add_subcommand("node", "Enrolled nodes");
  node->require_subcommand(1);

  auto admin_list = std::make_shared<AdminOptions>();
  auto* list_cmd = node->add_subcommand("list", "List nodes with their state");
  add_admin_options(*list_cmd, *admin_list);
  list_cmd->callback([admin_list, &exit_code] {
    if (auto ok = list(*admin_list); !ok) {
      print_error("node list", ok.error(), admin_list->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_show = std::make_shared<AdminOptions>();
  auto show_id = std::make_shared<std::string>();
  auto* show_cmd = node->add_subcommand("show", "Show one node, its last heartbeat and certificates");
  add_admin_options(*show_cmd, *admin_show);
  show_cmd->add_option("ID", *show_id, "Node UUID")->required();
  show_cmd->callback([admin_show, show_id, &exit_code] {
    if (auto ok = show(*admin_show, *show_id); !ok) {
      print_error("node show", ok.error(), admin_show->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_revoke = std::make_shared<AdminOptions>();
  auto revoke_id = std::make_shared<std::string>();
  auto* revoke_cmd = node->add_subcommand("revoke", "Revoke a node: every request with its certs fails at once");
  add_admin_options(*revoke_cmd, *admin_revoke);
  revoke_cmd->add_option("ID", *revoke_id, "Node UUID")->required();
  revoke_cmd->callback([admin_revoke, revoke_id, &exit_code] {
    if (auto ok = revoke(*admin_revoke, *revoke_id); !ok) {
      print_error("node revoke", ok.error(), admin_revoke->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_allow = std::make_shared<AdminOptions>();
  auto allow_id = std::make_shared<std::string>();
  auto* allow_cmd = node->add_subcommand(
      "allow-reenroll", "Let an enrolled node enroll again (once, within an hour) with a fleet token");
  add_admin_options(*allow_cmd, *admin_allow);
  allow_cmd->add_option("ID", *allow_id, "Node UUID")->required();
  allow_cmd->callback([admin_allow, allow_id, &exit_code] {
    if (auto ok = allow_reenroll(*admin_allow, *allow_id); !ok) {
      print_error("node allow-reenroll", ok.error(), admin_allow->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
