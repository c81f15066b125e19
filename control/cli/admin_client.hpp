// The operator CLI's side of /v1/admin: HTTPS with the admin certificate, JSON in and out,
// and the shared flags and output helpers of `token` and `node`.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.hpp"
#include "common/result.hpp"

namespace cairn::control::cli {

struct AdminOptions {
  std::string state_dir;  // supplies admin.crt, admin.key, ca.crt unless given one by one
  std::string server = "https://127.0.0.1:8443";
  std::string admin_cert;
  std::string admin_key;
  std::string ca;
  bool json = false;
};

// --state, --server, --admin-cert, --admin-key, --ca, --json on a subcommand.
void add_admin_options(CLI::App& cmd, AdminOptions& options);

// One admin call: `path` under the server URL ("/v1/admin/tokens"). A non-2xx answer is an
// Error carrying the server's message and hint (401/403 -> refused, 4xx -> data, 5xx -> unavailable).
Result<Json> admin_call(const AdminOptions& options, std::string_view method, std::string_view path,
                        const Json* body = nullptr);

// Output of the admin commands.
void print_error(std::string_view command, const Error& error, bool json);
// A left-aligned text table; rows are cells as text.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
// A field of an object as display text ("-" when absent or null).
std::string cell(const Json& object, std::string_view key);

// Runs `fn` (returning Status) as `cmd`'s action: a failure is printed as `name`'s error and
// its code becomes the process exit code.
template <class Fn>
void on_run(CLI::App* cmd, std::shared_ptr<AdminOptions> admin, const char* name, int& exit_code, Fn fn) {
  cmd->callback([admin, name, &exit_code, fn] {
    if (auto ok = fn(); !ok) {
      print_error(name, ok.error(), admin->json);
      exit_code = static_cast<int>(ok.error().code);
    }
  });
}

}  // namespace cairn::control::cli
