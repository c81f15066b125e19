// `cairn-control admin create|list|revoke`: admin credentials through the admin API. The
// key of a new credential is made here and never leaves this machine: the service signs a
// CSR for it.
#include <iostream>
#include <memory>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "control/ca.hpp"
#include "control/cli/admin_client.hpp"
#include "control/cli/commands.hpp"

namespace cairn::control::cli {
namespace {

Status create(const AdminOptions& admin, const std::string& name, const std::string& out_dir) {
  if (!valid_admin_name(name)) {
    return fail(Errc::usage, "admin name '" + name.substr(0, 64) + "' is not valid",
                "use up to " + std::to_string(kMaxAdminNameBytes) + " letters, digits, '-', '.', '_' or '@'");
  }
  const std::filesystem::path dir(out_dir);
  const auto cert_file = dir / (name + ".crt");
  const auto key_file = dir / (name + ".key");
  std::error_code ec;
  if (std::filesystem::exists(cert_file, ec) || std::filesystem::exists(key_file, ec)) {
    return fail(Errc::config, cert_file.string() + " or " + key_file.string() + " already exists",
                "pick another --out dir or remove the old files");
  }
  auto key = generate_key(KeyType::p256);
  if (!key) return fail(key.error());
  auto csr = make_csr_pem(key->get(), std::string(kAdminCnPrefix) + name);
  if (!csr) return fail(csr.error());
  const Json body = {{"name", name}, {"csr", *csr}};
  auto answer = admin_call(admin, "POST", "/v1/admin/admins", &body);
  if (!answer) return fail(answer.error());
  if (!answer->contains("certificate") || !(*answer)["certificate"].is_string()) {
    return fail(Errc::data, "the answer to POST /v1/admin/admins carries no certificate");
  }
  auto key_pem = private_key_pem(key->get());
  if (!key_pem) return fail(key_pem.error());
  if (auto ok = make_dirs(dir, 0700); !ok) return fail(ok.error());
  if (auto ok = write_file_atomic(key_file, *key_pem, 0600); !ok) return fail(ok.error());
  if (auto ok = write_file_atomic(cert_file, (*answer)["certificate"].get<std::string>(), 0644); !ok) {
    return fail(ok.error());
  }
  if (admin.json) {
    Json out = {{"name", name}, {"serial", cell(*answer, "serial")}, {"not_after", cell(*answer, "not_after")},
                {"certificate_file", cert_file.string()}, {"key_file", key_file.string()}};
    std::cout << dump_json(out, 2) << "\n";
  } else {
    std::cout << "admin " << name << " created, valid until " << cell(*answer, "not_after") << "\n"
              << "  " << cert_file.string() << "\n  " << key_file.string() << "  (0600, private key)\n"
              << "use: --admin-cert " << cert_file.string() << " --admin-key " << key_file.string()
              << " --ca STATE/ca.crt\n";
  }
  return {};
}

Status list(const AdminOptions& admin) {
  auto answer = admin_call(admin, "GET", "/v1/admin/admins");
  if (!answer) return fail(answer.error());
  if (admin.json) {
    std::cout << dump_json(*answer, 2) << "\n";
    return {};
  }
  std::vector<std::vector<std::string>> rows;
  if (answer->contains("admins") && (*answer)["admins"].is_array()) {
    for (const auto& a : (*answer)["admins"]) {
      rows.push_back({cell(a, "name"), cell(a, "serial"), cell(a, "issued_at"), cell(a, "not_after"),
                      cell(a, "revoked_at")});
    }
  }
  print_table({"NAME", "SERIAL", "ISSUED", "NOT AFTER", "REVOKED"}, rows);
  return {};
}

Status revoke(const AdminOptions& admin, const std::string& name) {
  auto answer = admin_call(admin, "POST", "/v1/admin/admins/" + name + "/revoke");
  if (!answer) return fail(answer.error());
  if (admin.json) std::cout << dump_json(*answer, 2) << "\n";
  else std::cout << "admin " << name << " revoked: its certificates are refused from the next request on\n";
  return {};
}

}  // namespace

void add_admin(CLI::App& app, int& exit_code) {
  auto* group = app.add_subcommand("admin", "Admin credentials");
  group->require_subcommand(1);

  auto admin_create = std::make_shared<AdminOptions>();
  auto create_name = std::make_shared<std::string>();
  auto out_dir = std::make_shared<std::string>(".");
  auto* create_cmd = group->add_subcommand("create", "Create an admin credential NAME.crt/NAME.key in --out");
  add_admin_options(*create_cmd, *admin_create);
  create_cmd->add_option("NAME", *create_name, "Admin name (CN admin:NAME)")->required();
  create_cmd->add_option("--out", *out_dir, "Directory for NAME.crt and NAME.key")->capture_default_str();
  create_cmd->callback([admin_create, create_name, out_dir, &exit_code] {
    if (auto ok = create(*admin_create, *create_name, *out_dir); !ok) {
      print_error("admin create", ok.error(), admin_create->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_list = std::make_shared<AdminOptions>();
  auto* list_cmd = group->add_subcommand("list", "List admin credentials");
  add_admin_options(*list_cmd, *admin_list);
  list_cmd->callback([admin_list, &exit_code] {
    if (auto ok = list(*admin_list); !ok) {
      print_error("admin list", ok.error(), admin_list->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });

  auto admin_revoke = std::make_shared<AdminOptions>();
  auto revoke_name = std::make_shared<std::string>();
  auto* revoke_cmd = group->add_subcommand("revoke", "Revoke every credential of admin NAME (not your own)");
  add_admin_options(*revoke_cmd, *admin_revoke);
  revoke_cmd->add_option("NAME", *revoke_name, "Admin name")->required();
  revoke_cmd->callback([admin_revoke, revoke_name, &exit_code] {
    if (auto ok = revoke(*admin_revoke, *revoke_name); !ok) {
      print_error("admin revoke", ok.error(), admin_revoke->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
