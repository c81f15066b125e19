// HTTPS client of /v1/admin for the operator CLI (over common/http.hpp, libcurl).
#include "control/cli/admin_client.hpp"

#include <algorithm>
#include <iostream>

#include "common/http.hpp"
#include "common/protocol/messages.hpp"
#include "control/state_paths.hpp"

namespace cairn::control::cli {

void add_admin_options(CLI::App& cmd, AdminOptions& o) {
  cmd.add_option("--state", o.state_dir, "State dir: its admin.crt, admin.key and ca.crt are used");
  cmd.add_option("--server", o.server, "URL of the control service")->capture_default_str();
  cmd.add_option("--admin-cert", o.admin_cert, "Admin certificate (PEM); default STATE/admin.crt");
  cmd.add_option("--admin-key", o.admin_key, "Admin key (PEM); default STATE/admin.key");
  cmd.add_option("--ca", o.ca, "Cluster CA the server must chain to; default STATE/ca.crt");
  cmd.add_flag("--json", o.json, "Print JSON instead of a table");
}

Result<Json> admin_call(const AdminOptions& o, std::string_view method, std::string_view path,
                        const Json* body) {
  const StatePaths state{o.state_dir};
  TlsOptions tls;
  tls.client_cert_file = !o.admin_cert.empty() ? o.admin_cert : state.admin_cert().string();
  tls.client_key_file = !o.admin_key.empty() ? o.admin_key : state.admin_key().string();
  tls.ca_file = !o.ca.empty() ? o.ca : state.ca_cert().string();
  if (o.state_dir.empty() && (o.admin_cert.empty() || o.admin_key.empty() || o.ca.empty())) {
    return fail(Errc::usage, "no admin credential: neither --state nor --admin-cert/--admin-key/--ca given",
                "pass --state DIR (the dir of 'cairn-control init') or all three files");
  }
  auto client = make_lean_http_client(tls);
  HttpRequest request;
  request.method = std::string(method);
  std::string base = o.server;
  while (!base.empty() && base.back() == '/') base.pop_back();
  request.url = base + std::string(path);
  request.headers.emplace_back("Accept", "application/json");
  if (body != nullptr) {
    request.headers.emplace_back("Content-Type", "application/json");
    request.body = dump_json(*body);
  }
  request.max_response_bytes = 64 << 20;  // a node list of a large fleet
  auto response = client->send(request);
  if (!response) {
    Error e = response.error();
    if (e.code == Errc::refused) {
      e.hint = "the server's certificate does not chain to " + tls.ca_file +
               ", or the admin certificate was refused; check --state/--ca";
    } else if (e.code == Errc::unavailable) {
      e.hint = "is 'cairn-control serve' running at " + o.server + "? set --server";
    }
    return fail(std::move(e));
  }
  if (response->status >= 200 && response->status < 300) {
    return parse_json(response->body, request.method + " " + request.url + " answer");
  }
  const Errc code = response->status == 401 || response->status == 403 ? Errc::refused
                    : response->status >= 500                           ? Errc::unavailable
                                                                        : Errc::data;
  std::string message = request.method + " " + std::string(path) + ": HTTP " + std::to_string(response->status);
  std::string hint;
  if (auto err = protocol::decode_error_body(response->body)) {
    message += " " + err->code + ": " + err->message;
    hint = err->hint;
  }
  return fail(code, std::move(message), std::move(hint));
}

void print_error(std::string_view command, const Error& error, bool json) {
  if (json) {
    Json out = {{"command", command},
                {"ok", false},
                {"error", {{"code", errc_name(error.code)}, {"message", error.message}, {"hint", error.hint}}}};
    std::cout << dump_json(out, 2) << "\n";
    return;
  }
  std::cerr << "cairn-control " << command << ": " << error.message << "\n";
  if (!error.hint.empty()) std::cerr << "hint: " << error.hint << "\n";
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < cells.size() && i < width.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - cells[i].size() + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(header);
  for (const auto& row : rows) line(row);
}

std::string cell(const Json& object, std::string_view key) {
  if (!object.is_object()) return "-";
  const auto it = object.find(std::string(key));
  if (it == object.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>().empty() ? "-" : it->get<std::string>();
  if (it->is_boolean()) return it->get<bool>() ? "yes" : "no";
  if (it->is_object()) {
    // labels: k=v,k=v
    std::string out;
    for (const auto& [k, v] : it->items()) {
      if (!out.empty()) out += ",";
      out += k + "=" + (v.is_string() ? v.get<std::string>() : dump_json(v));
    }
    return out.empty() ? "-" : out;
  }
  return dump_json(*it);
}

}  // namespace cairn::control::cli
