#include "tests/support/fake_clouds.hpp"

#include <nlohmann/json.hpp>

#include <random>
#include <stdexcept>

namespace cairn::test {
namespace {

using Response = HttpServer::Response;

Response text(std::string body, int status = 200) { return Response{status, {}, std::move(body), {}, false}; }
Response json(const nlohmann::json& j) {
  return Response{200, {{"Content-Type", "application/json"}}, j.dump(), {}, false};
}

std::string random_token() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  for (int i = 0; i < 56; ++i) out.push_back(kChars[rng() % (sizeof kChars - 1)]);
  return out + "==";
}

// RFC 4648 base64, as Azure IMDS encodes userData.
std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int s : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], kAlphabet[(v >> 6) & 63], '='};
  }
  return out;
}

}  // namespace

FakeInstance default_fake_instance(const std::string& cloud) {
  if (cloud == "aws") return {"", "i-0123456789abcdef0", "eu-west-1", "eu-west-1a", "t3.micro", "ip-10-fake.eu-west-1.compute.internal"};
  if (cloud == "gcp") return {"", "4567890123456789012", "europe-west1", "europe-west1-b", "e2-medium", "node-1.c.project.internal"};
  if (cloud == "azure") return {"02aab8a4-74ef-476e-8182-f6d2ba4166a6", "", "westeurope", "1", "Standard_D2s_v3", "azure-node-1"};
  if (cloud == "digitalocean") return {"", "2756294", "nyc3", "", "", "do-node-1"};
  if (cloud == "hetzner") return {"", "42001337", "eu-central", "fsn1-dc14", "", "hetzner-node-1"};
  if (cloud == "openstack") return {"83679162-1378-4288-a2d4-70e13ec132aa", "", "", "nova", "", "openstack-node-1"};
  throw std::invalid_argument("no fake for cloud " + cloud);
}

FakeCloud::FakeCloud(std::string cloud) : FakeCloud(cloud, default_fake_instance(cloud)) {}

FakeCloud::FakeCloud(std::string cloud, FakeInstance instance)
    : cloud_(std::move(cloud)),
      instance_(std::move(instance)),
      server_([this](const HttpServer::Request& r) { return handle(r); }) {}

void FakeCloud::set_user_data(std::string text, std::string gcp_key) {
  std::lock_guard lock(mutex_);
  user_data_ = std::move(text);
  gcp_user_data_key_ = std::move(gcp_key);
  azure_raw_ = false;
}

void FakeCloud::set_raw_azure_user_data(std::string body) {
  std::lock_guard lock(mutex_);
  user_data_ = std::move(body);
  azure_raw_ = true;
}

// The user-data answer once the cloud's own rules passed; `key` is GCP's attribute name.
Response FakeCloud::user_data(const HttpServer::Request& request, const std::string& key) {
  ++user_data_requests_;
  if (request.method != "GET") return refuse(405, "");
  std::lock_guard lock(mutex_);
  if (cloud_ == "azure") {
    // Azure answers an empty body when the VM has no userData.
    return text(!user_data_ ? std::string() : azure_raw_ ? *user_data_ : base64(*user_data_));
  }
  if (cloud_ == "gcp") {
    Response r = text("", 404);
    if (user_data_ && key == gcp_user_data_key_) r = text(*user_data_);
    r.headers.emplace_back("Metadata-Flavor", "Google");
    return r;
  }
  if (!user_data_) return cloud_ == "hetzner" ? text("") : text("", 404);
  return text(*user_data_);
}

Response FakeCloud::refuse(int status, std::string body) {
  ++refused_;
  return text(std::move(body), status);
}

Response FakeCloud::handle(const HttpServer::Request& request) {
  switch (misbehaviour_.load()) {
    case Misbehaviour::none: break;
    case Misbehaviour::http_500: return text("internal error", 500);
    case Misbehaviour::http_404: return text("not found", 404);
    case Misbehaviour::oversized: {
      Response r = text(std::string(1 << 20, 'x'));
      if (cloud_ == "gcp") r.headers.emplace_back("Metadata-Flavor", "Google");
      return r;
    }
    case Misbehaviour::malformed: {
      Response r = text("<html>captive portal</html>");
      if (cloud_ == "gcp") r.headers.emplace_back("Metadata-Flavor", "Google");
      return r;
    }
    case Misbehaviour::never_answer: {
      Response r;
      r.never_answer = true;
      return r;
    }
  }
  if (cloud_ == "aws") return aws(request);
  if (cloud_ == "gcp") return gcp(request);
  if (cloud_ == "azure") return azure(request);
  if (cloud_ == "digitalocean") return digitalocean(request);
  if (cloud_ == "hetzner") return hetzner(request);
  return openstack(request);
}

// IMDSv2: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
Response FakeCloud::aws(const HttpServer::Request& request) {
  const auto now = std::chrono::steady_clock::now();
  if (request.path == "/latest/api/token") {
    if (request.method != "PUT") return refuse(405, "");
    const auto ttl_text = request.header("x-aws-ec2-metadata-token-ttl-seconds");
    if (ttl_text.empty() || ttl_text.size() > 5 ||
        ttl_text.find_first_not_of("0123456789") != std::string::npos) {
      return refuse(400, "");
    }
    const int ttl = std::stoi(ttl_text);
    if (ttl < 1 || ttl > 21600) return refuse(400, "");
    auto token = random_token();
    auto expiry = now + std::chrono::seconds(ttl);
    if (expire_next_.load() > 0) {
      --expire_next_;
      expiry = now - std::chrono::seconds(1);
    }
    {
      std::lock_guard lock(mutex_);
      tokens_[token] = expiry;
    }
    ++tokens_issued_;
    Response r = text(token);
    r.headers.emplace_back("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl_text);
    return r;
  }
  if (request.method != "GET") return refuse(405, "");
  {
    std::lock_guard lock(mutex_);
    auto it = tokens_.find(request.header("x-aws-ec2-metadata-token"));
    if (it == tokens_.end() || it->second <= now) return refuse(401, "");
  }
  if (request.path == "/latest/dynamic/instance-identity/document") {
    return json({{"accountId", "123456789012"},
                 {"architecture", "x86_64"},
                 {"availabilityZone", instance_.zone},
                 {"imageId", "ami-0123456789abcdef0"},
                 {"instanceId", instance_.instance_id},
                 {"instanceType", instance_.instance_type},
                 {"region", instance_.region},
                 {"version", "2017-09-30"}});
  }
  if (request.path == "/latest/user-data") return user_data(request, "");
  if (request.path == "/latest/meta-data/instance-id") return text(instance_.instance_id);
  if (request.path == "/latest/meta-data/local-hostname") return text(instance_.hostname);
  return text("", 404);
}

// https://cloud.google.com/compute/docs/metadata/querying-metadata
Response FakeCloud::gcp(const HttpServer::Request& request) {
  if (request.header("metadata-flavor") != "Google") {
    return refuse(403, "Your client does not have permission to get URL from this server. "
                       "Missing Metadata-Flavor:Google header.");
  }
  const std::string attributes = "/computeMetadata/v1/instance/attributes/";
  if (request.path.starts_with(attributes)) return user_data(request, request.path.substr(attributes.size()));
  Response r = text("", 404);
  const std::string prefix = "/computeMetadata/v1/instance/";
  if (request.method == "GET" && request.path.starts_with(prefix)) {
    const auto key = request.path.substr(prefix.size());
    if (key == "id") r = text(instance_.instance_id);
    if (key == "zone") r = text("projects/123456789012/zones/" + instance_.zone);
    if (key == "machine-type") r = text("projects/123456789012/machineTypes/" + instance_.instance_type);
    if (key == "hostname") r = text(instance_.hostname);
  }
  r.headers.emplace_back("Metadata-Flavor", "Google");
  return r;
}

// https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service
Response FakeCloud::azure(const HttpServer::Request& request) {
  if (request.header("metadata") != "true") {
    return refuse(400, R"({"error": "Bad request. Required metadata header not specified"})");
  }
  const auto version = request.query_param("api-version");
  if (version.empty()) {
    return refuse(400, R"({"error": "Bad request. api-version was not specified in the request."})");
  }
  if (version < "2017-04-02") return refuse(400, R"({"error": "Bad request. api-version is invalid."})");
  if (request.path == "/metadata/instance/compute/userData") {
    // userData needs api-version 2021-01-01 or later and format=text (Azure IMDS docs).
    if (version < "2021-01-01" || request.query_param("format") != "text") {
      return refuse(400, R"({"error": "Bad request. userData needs api-version 2021-01-01 and format=text"})");
    }
    return user_data(request, "");
  }
  if (request.method != "GET" || request.path != "/metadata/instance") return text("", 404);
  return json({{"compute",
                {{"vmId", instance_.uuid},
                 {"location", instance_.region},
                 {"zone", instance_.zone},
                 {"vmSize", instance_.instance_type},
                 {"name", instance_.hostname},
                 {"resourceId", "/subscriptions/x/resourceGroups/rg/providers/"
                                "Microsoft.Compute/virtualMachines/" + instance_.hostname},
                 {"osProfile", {{"computerName", instance_.hostname}}}}},
               {"network", nlohmann::json::object()}});
}

// https://docs.digitalocean.com/reference/api/metadata-api/
Response FakeCloud::digitalocean(const HttpServer::Request& request) {
  if (request.path == "/metadata/v1/user-data") return user_data(request, "");
  if (request.method != "GET" || request.path != "/metadata/v1.json") return text("", 404);
  return json({{"droplet_id", std::stoull(instance_.instance_id)},
               {"hostname", instance_.hostname},
               {"region", instance_.region},
               {"public_keys", nlohmann::json::array()}});
}

// https://docs.hetzner.cloud/#server-metadata
Response FakeCloud::hetzner(const HttpServer::Request& request) {
  if (request.path == "/hetzner/v1/userdata") return user_data(request, "");
  if (request.method != "GET" || request.path != "/hetzner/v1/metadata") return text("", 404);
  return text("availability-zone: " + instance_.zone + "\nhostname: " + instance_.hostname +
              "\ninstance-id: " + instance_.instance_id + "\nlocal-ipv4: ''\nnetwork-config:\n"
              "  config:\n  - mac_address: 96:00:00:00:00:01\n    type: physical\n"
              "  version: 1\npublic-keys: []\nregion: " + instance_.region +
              "\nvendor_data: \"#cloud-config\\n\"\n");
}

// https://docs.openstack.org/nova/latest/user/metadata.html
Response FakeCloud::openstack(const HttpServer::Request& request) {
  if (request.path == "/openstack/latest/user_data") return user_data(request, "");
  if (request.method != "GET" || request.path != "/openstack/latest/meta_data.json") return text("", 404);
  return json({{"uuid", instance_.uuid},
               {"hostname", instance_.hostname},
               {"name", instance_.hostname},
               {"availability_zone", instance_.zone},
               {"launch_index", 0},
               {"project_id", "9b3f5f3bd5a74e5d8a21c46d84b5d8c1"}});
}

}  // namespace cairn::test
