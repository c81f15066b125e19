// `cairn-control token create|list|revoke`: bootstrap tokens through the admin API.
#include <iostream>
#include <memory>

#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"
#include "control/cli/parse.hpp"

namespace cairn::control::cli {
namespace {

struct CreateOptions {
  std::string ttl = "1h";
  int uses = 1;
  std::string labels;
  std::string expect_id;
};

// "k=v,k2=v2" -> {"k": "v", "k2": "v2"}
Result<Json> parse_labels(std::string_view text) {
  Json out = Json::object();
  while (!text.empty()) {
    const auto comma = text.find(',');
    const auto item = text.substr(0, comma);
    const auto eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return fail(Errc::usage, "--labels: '" + std::string(item) + "' is not key=value",
                  "write --labels role=web,zone=a");
    }
    out[std::string(item.substr(0, eq))] = std::string(item.substr(eq + 1));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

Status create(const AdminOptions& admin, const CreateOptions& o) {
  auto ttl = parse_duration(o.ttl, "--ttl");
  if (!ttl) return fail(ttl.error());
  if (o.uses < 1) return fail(Errc::usage, "--uses must be at least 1");
  auto labels = parse_labels(o.labels);
  if (!labels) return fail(labels.error());
  Json body = {{"ttl_s", std::chrono::duration_cast<std::chrono::seconds>(*ttl).count()},
               {"uses", o.uses},
               {"labels", *labels}};
  if (!o.expect_id.empty()) body["expect_id"] = o.expect_id;
  auto answer = admin_call(admin, "POST", "/v1/admin/tokens", &body);
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
  } else {
    // The token alone on stdout, so `TOKEN=$(cairn-control token create ...)` works.
    std::cout << cell(*answer, "token") << "\n";
    std::cerr << "token " << cell(*answer, "id") << " expires " << cell(*answer, "expires_at") << "\n";
  }
  return {};
}

Status list(const AdminOptions& admin) {
  auto answer = admin_call(admin, "GET", "/v1/admin/tokens");
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("tokens") && (*answer)["tokens"].is_array()) {
    for (const auto& t : (*answer)["tokens"]) {
      rows.push_back({cell(t, "id"), cell(t, "created_at"), cell(t, "expires_at"),
                      cell(t, "uses") + "/" + cell(t, "max_uses"), cell(t, "labels"), cell(t, "expect_id"),
                      cell(t, "revoked")});
    }
  }
  print_table({"ID", "CREATED", "EXPIRES", "USES", "LABELS", "EXPECT-ID", "REVOKED"}, rows);
  return {};
}

Status revoke(const AdminOptions& admin, const std::string& id) {
  auto answer = admin_call(admin, "POST", "/v1/admin/tokens/" + id + "/revoke");
  if (!answer) return fail(answer.error());
  if (admin.json) std::cout << dump_json(*answer, 2) << "\n";
  else std::cout << "token " << id << " revoked\n";
  return {};
}

}  // namespace

void add_token(CLI::App& app, int& exit_code) {
  auto* token = app.add_subcommand("token", "Bootstrap tokens for enrollment");
  token->require_subcommand(1);

  auto admin_create = std::make_shared<AdminOptions>();
  auto options = std::make_shared<CreateOptions>();
  auto* create_cmd = token->add_subcommand("create", "Create a bootstrap token and print it");
  add_admin_options(*create_cmd, *admin_create);
  create_cmd->add_option("--ttl", options->ttl, "Valid for (e.g. 1h, 7d)")->capture_default_str();
  create_cmd->add_option("--uses", options->uses, "Enrollments it allows")->capture_default_str();
  create_cmd->add_option("--labels", options->labels, "Labels given to nodes enrolled with it: k=v,...");
  create_cmd->add_option("--expect-id", options->expect_id, "Only a node with this UUID may use it");
  create_cmd->callback([admin_create, options, &exit_code] {
    if (auto ok = create(*admin_create, *options); !ok) {
      print_error("token create", ok.error(), admin_create->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_list = std::make_shared<AdminOptions>();
  auto* list_cmd = token->add_subcommand("list", "List bootstrap tokens (never their secret)");
  add_admin_options(*list_cmd, *admin_list);
  list_cmd->callback([admin_list, &exit_code] {
    if (auto ok = list(*admin_list); !ok) {
      print_error("token list", ok.error(), admin_list->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_revoke = std::make_shared<AdminOptions>();
  auto id = std::make_shared<std::string>();
  auto* revoke_cmd = token->add_subcommand("revoke", "Revoke a bootstrap token");
  add_admin_options(*revoke_cmd, *admin_revoke);
  revoke_cmd->add_option("ID", *id, "Token id (from 'token list')")->required();
  revoke_cmd->callback([admin_revoke, id, &exit_code] {
    if (auto ok = revoke(*admin_revoke, *id); !ok) {
      print_error("token revoke", ok.error(), admin_revoke->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
