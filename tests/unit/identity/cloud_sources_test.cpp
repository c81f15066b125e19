// Every cloud source against a fake metadata server on 127.0.0.1 that enforces the cloud's
// rules, with the real curl client in between.
#include <doctest/doctest.h>

#include <map>

#include "common/http.hpp"
#include "identity/cascade.hpp"
#include "identity/name_uuid.hpp"
#include "tests/support/fake_clouds.hpp"
#include "tests/unit/identity/fake_host.hpp"
#include "tests/unit/identity/helpers.hpp"

using cairn::identity::Outcome;
using cairn::test::answer;
using cairn::test::attempt_of;
using cairn::test::contains;
using cairn::test::FakeCloud;
using cairn::test::FakeHost;
using cairn::test::Misbehaviour;
using cairn::test::run_cascade;

namespace {

const char* const kClouds[] = {"aws", "gcp", "azure", "digitalocean", "hetzner", "openstack"};

// A host whose configuration forces `cloud` and points it at `fake`.
cairn::identity::Config config_for(const FakeHost& host, const std::string& cloud,
                                   const FakeCloud& fake) {
  auto config = host.config();
  config.forced_clouds = {cloud};
  config.base_urls[cloud] = fake.base_url();
  return config;
}

}  // namespace

TEST_CASE("every cloud source answers from its metadata server with the fleet facts") {
  struct Expect {
    const char* cloud;
    const char* uuid;  // empty: derived from the instance id (no DMI uuid on the fake host)
    const char* instance_id;
    const char* region;
    const char* zone;
    const char* type;
  };
  const Expect cases[] = {
      {"aws", "", "i-0123456789abcdef0", "eu-west-1", "eu-west-1a", "t3.micro"},
      {"gcp", "", "4567890123456789012", "europe-west1", "europe-west1-b", "e2-medium"},
      {"azure", "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
       "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/azure-node-1",
       "westeurope", "1", "Standard_D2s_v3"},
      {"digitalocean", "", "2756294", "nyc3", "", ""},
      {"hetzner", "", "42001337", "eu-central", "fsn1-dc14", ""},
      {"openstack", "83679162-1378-4288-a2d4-70e13ec132aa", "83679162-1378-4288-a2d4-70e13ec132aa",
       "", "nova", ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.cloud);
    FakeHost host;
    FakeCloud fake(c.cloud);
    auto d = run_cascade(config_for(host, c.cloud, fake));
    REQUIRE(d.identity);
    CHECK(d.identity->source == c.cloud);
    CHECK(d.identity->platform == c.cloud);
    CHECK(d.identity->instance_id == c.instance_id);
    CHECK(d.identity->region == c.region);
    CHECK(d.identity->zone == c.zone);
    CHECK(d.identity->instance_type == c.type);
    CHECK(d.identity->hostname == fake.instance().hostname);
    const std::string expected_uuid = *c.uuid ? std::string(c.uuid)
                                              : cairn::identity::cloud_instance_uuid(c.cloud, c.instance_id).str();
    CHECK(d.identity->uuid.str() == expected_uuid);
    CHECK(attempt_of(d, c.cloud).outcome == Outcome::answered);
    CHECK(fake.refused() == 0);  // the source followed every rule of the cloud
    CHECK_FALSE(std::filesystem::exists(host.identity_file()));
  }
}

TEST_CASE("a cloud without a UUID takes the DMI product_uuid, so a boot without metadata keeps it") {
  FakeHost host;
  host.dmi("sys_vendor", "Amazon EC2");
  host.dmi("product_uuid", "EC2E1916-9099-7CAF-FD21-012345678901");
  FakeCloud fake("aws");
  auto config = host.config();
  config.base_urls["aws"] = fake.base_url();
  auto with_metadata = run_cascade(config);
  REQUIRE(with_metadata.identity);
  CHECK(with_metadata.identity->source == "aws");
  CHECK(with_metadata.identity->uuid.str() == "ec2e1916-9099-7caf-fd21-012345678901");

  fake.misbehave(Misbehaviour::http_500);
  auto without = run_cascade(config);
  REQUIRE(without.identity);
  CHECK(without.identity->source == "dmi");
  CHECK(without.identity->uuid == with_metadata.identity->uuid);
  CHECK(without.identity->platform == "aws");
}

TEST_CASE("name-based node UUIDs follow RFC 9562 version 5") {
  // The RFC 9562 appendix A.4 example: v5 of "www.example.com" in the DNS namespace.
  auto dns = cairn::parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8").value();
  CHECK(cairn::identity::name_uuid_v5(dns, "www.example.com").str() ==
        "2ed6657d-e927-568b-95e1-2665a8aea6a2");
  CHECK(cairn::identity::cloud_instance_uuid("aws", "i-1") ==
        cairn::identity::cloud_instance_uuid("aws", "i-1"));
  CHECK_FALSE(cairn::identity::cloud_instance_uuid("aws", "1") ==
              cairn::identity::cloud_instance_uuid("hetzner", "1"));
}

TEST_CASE("AWS IMDSv2 refuses requests without a session token or a valid TTL") {
  FakeCloud fake("aws");
  auto http = cairn::make_http_client();
  cairn::HttpRequest get;
  get.url = fake.base_url() + "/latest/dynamic/instance-identity/document";
  CHECK(answer(*http, get).status == 401);
  cairn::HttpRequest put;
  put.method = "PUT";
  put.url = fake.base_url() + "/latest/api/token";
  CHECK(answer(*http, put).status == 400);  // no TTL header
  put.headers = {{"X-aws-ec2-metadata-token-ttl-seconds", "21601"}};
  CHECK(answer(*http, put).status == 400);  // TTL over 6 hours
  put.headers = {{"X-aws-ec2-metadata-token-ttl-seconds", "0"}};
  CHECK(answer(*http, put).status == 400);
  put.headers = {{"X-aws-ec2-metadata-token-ttl-seconds", "21600"}};
  const auto token = answer(*http, put);
  REQUIRE(token.status == 200);
  get.headers = {{"X-aws-ec2-metadata-token", token.body}};
  CHECK(answer(*http, get).status == 200);
  get.headers = {{"X-aws-ec2-metadata-token", "forged"}};
  CHECK(answer(*http, get).status == 401);
}

TEST_CASE("AWS: an expired session token is refused and the source fetches a fresh one") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.expire_next_tokens(1);
  auto d = run_cascade(config_for(host, "aws", fake));
  REQUIRE(d.identity);
  CHECK(d.identity->source == "aws");
  CHECK(fake.tokens_issued() == 2);
  CHECK(fake.refused() == 1);  // the GET with the expired token
}

TEST_CASE("AWS: when every token is expired on arrival the source fails clearly") {
  FakeHost host;
  FakeCloud fake("aws");
  fake.expire_next_tokens(100);
  auto d = run_cascade(config_for(host, "aws", fake));
  const auto& a = attempt_of(d, "aws");
  CHECK(a.outcome == Outcome::failed);
  CHECK(contains(a.reason, "refused two fresh session tokens (HTTP 401)"));
  CHECK(fake.tokens_issued() == 2);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
}

TEST_CASE("GCP and Azure answer only requests carrying their metadata header, and the sources send it") {
  auto http = cairn::make_http_client();
  FakeCloud gcp("gcp");
  cairn::HttpRequest request;
  request.url = gcp.base_url() + "/computeMetadata/v1/instance/id";
  CHECK(answer(*http, request).status == 403);
  request.headers = {{"Metadata-Flavor", "Google"}};
  const auto ok = answer(*http, request);
  CHECK(ok.status == 200);
  CHECK(ok.header("metadata-flavor") == "Google");

  FakeCloud azure("azure");
  request.headers.clear();
  request.url = azure.base_url() + "/metadata/instance?api-version=2021-02-01";
  CHECK(answer(*http, request).status == 400);  // no Metadata: true
  request.headers = {{"Metadata", "true"}};
  request.url = azure.base_url() + "/metadata/instance";
  CHECK(answer(*http, request).status == 400);  // no api-version
  request.url = azure.base_url() + "/metadata/instance?api-version=2021-02-01";
  CHECK(answer(*http, request).status == 200);

  const auto refused_before_gcp = gcp.refused();
  const auto refused_before_azure = azure.refused();
  for (FakeCloud* fake : {&gcp, &azure}) {
    FakeHost host;
    const std::string cloud = fake == &gcp ? "gcp" : "azure";
    auto d = run_cascade(config_for(host, cloud, *fake));
    REQUIRE(d.identity);
    CHECK(d.identity->source == cloud);
  }
  CHECK(gcp.refused() == refused_before_gcp);
  CHECK(azure.refused() == refused_before_azure);
}

TEST_CASE("GCP: an answer without Metadata-Flavor: Google is not the metadata server") {
  FakeHost host;
  cairn::test::HttpServer impostor([](const cairn::test::HttpServer::Request&) {
    return cairn::test::HttpServer::Response{200, {}, "123", {}, false};
  });
  auto config = host.config();
  config.forced_clouds = {"gcp"};
  config.base_urls["gcp"] = impostor.base_url();
  auto d = run_cascade(config);
  CHECK(attempt_of(d, "gcp").outcome == Outcome::failed);
  CHECK(contains(attempt_of(d, "gcp").reason, "lacks Metadata-Flavor: Google"));
}

TEST_CASE("HTTP errors, oversized and malformed answers fail each cloud with a reason") {
  // What each cloud's source says of a captive portal's HTML page.
  const std::map<std::string, std::string> malformed = {
      {"aws", "EC2 instance identity document: malformed JSON"},
      {"gcp", "GCE metadata instance/id: not a numeric id ('<html>captive portal</html>')"},
      {"azure", "Azure IMDS instance document: malformed JSON"},
      {"digitalocean", "DigitalOcean metadata: malformed JSON"},
      {"hetzner", "Hetzner metadata: no numeric instance-id ('')"},
      {"openstack", "OpenStack meta_data.json: malformed JSON"},
  };
  struct Case {
    Misbehaviour misbehaviour;
    std::string reason;  // empty: the cloud's own words from `malformed`
  };
  const Case cases[] = {
      {Misbehaviour::http_500, "HTTP 500"},
      {Misbehaviour::http_404, "HTTP 404"},
      {Misbehaviour::oversized, "response larger than 65536 bytes"},
      {Misbehaviour::malformed, ""},
  };
  for (const std::string cloud : kClouds) {
    for (const auto& c : cases) {
      CAPTURE(cloud);
      CAPTURE(static_cast<int>(c.misbehaviour));
      FakeHost host;
      FakeCloud fake(cloud);
      fake.misbehave(c.misbehaviour);
      auto d = run_cascade(config_for(host, cloud, fake));
      const auto& a = attempt_of(d, cloud);
      CHECK(a.outcome == Outcome::failed);
      const std::string expected = c.reason.empty() ? malformed.at(cloud) : c.reason;
      CHECK(contains(a.reason, expected));
      REQUIRE(d.identity);
      CHECK(d.identity->source == "local");
    }
  }
}

TEST_CASE("nil or malformed UUIDs from Azure and OpenStack metadata are refused") {
  const std::string bad[] = {"00000000-0000-0000-0000-000000000000",
                             "ffffffff-ffff-ffff-ffff-ffffffffffff", "abc", ""};
  for (const std::string cloud : {"azure", "openstack"}) {
    for (const auto& uuid : bad) {
      CAPTURE(cloud);
      CAPTURE(uuid);
      auto instance = cairn::test::default_fake_instance(cloud);
      instance.uuid = uuid;
      FakeHost host;
      FakeCloud fake(cloud, instance);
      auto d = run_cascade(config_for(host, cloud, fake));
      const auto& a = attempt_of(d, cloud);
      CHECK(a.outcome == Outcome::failed);
      CHECK(contains(a.reason, cloud == "azure" ? "compute.vmId: " : "meta_data.json uuid: "));
      REQUIRE(d.identity);
      CHECK(d.identity->source == "local");
    }
  }
}

TEST_CASE("a cloud named by the DMI hint is probed without configuration") {
  FakeHost host;
  host.dmi("sys_vendor", "Hetzner");
  FakeCloud fake("hetzner");
  auto config = host.config();
  config.base_urls["hetzner"] = fake.base_url();
  auto d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(d.identity->source == "hetzner");
  CHECK(fake.requests() == 1);
}

TEST_CASE("without a DMI hint no cloud is probed: the fake servers see zero requests") {
  FakeHost host;
  host.dmi("sys_vendor", "Dell Inc.");
  std::vector<std::unique_ptr<FakeCloud>> fakes;
  auto config = host.config();
  for (const char* cloud : kClouds) {
    fakes.push_back(std::make_unique<FakeCloud>(cloud));
    config.base_urls[cloud] = fakes.back()->base_url();
  }
  auto d = run_cascade(config);
  for (std::size_t i = 0; i < fakes.size(); ++i) {
    CAPTURE(kClouds[i]);
    CHECK(fakes[i]->requests() == 0);
    const auto& a = attempt_of(d, kClouds[i]);
    CHECK(a.outcome == Outcome::skipped);
    CHECK(a.reason == std::string("no DMI hint for ") + kClouds[i]);
  }
  REQUIRE(d.identity);
  CHECK(d.identity->source == "local");
}

TEST_CASE("Azure: the same machine keeps the same id whether IMDS or the DMI fallback answers") {
  // vmId is the DMI product_uuid on Gen2 VMs and that UUID byte-swapped on Gen1 VMs
  // (the fake's vmId is 02aab8a4-74ef-476e-8182-f6d2ba4166a6).
  struct Case {
    const char* generation;
    const char* dmi_uuid;
  };
  const Case cases[] = {
      {"Gen1", "A4B8AA02-EF74-6E47-8182-F6D2BA4166A6"},
      {"Gen2", "02AAB8A4-74EF-476E-8182-F6D2BA4166A6"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.generation);
    FakeHost host;
    host.dmi("sys_vendor", "Microsoft Corporation");
    host.dmi("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77");
    host.dmi("product_uuid", c.dmi_uuid);
    FakeCloud fake("azure");
    auto config = host.config();
    config.base_urls["azure"] = fake.base_url();
    auto with_imds = run_cascade(config);
    REQUIRE(with_imds.identity);
    CHECK(with_imds.identity->source == "azure");
    CHECK(with_imds.identity->region == "westeurope");

    fake.misbehave(Misbehaviour::http_500);
    auto without = run_cascade(config);
    REQUIRE(without.identity);
    CHECK(without.identity->source == "dmi");
    CHECK(without.identity->uuid == with_imds.identity->uuid);
    CHECK(with_imds.identity->uuid.str() == cairn::parse_uuid(c.dmi_uuid)->str());
  }
}

TEST_CASE("Azure: the answer says how vmId relates to the DMI UUID") {
  FakeHost host;
  host.dmi("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77");
  host.dmi("product_uuid", "A4B8AA02-EF74-6E47-8182-F6D2BA4166A6");
  FakeCloud fake("azure");
  auto config = host.config();
  config.base_urls["azure"] = fake.base_url();
  auto d = run_cascade(config);
  CHECK(contains(attempt_of(d, "azure").reason, "vmId is the DMI product_uuid byte-swapped (Gen1)"));

  // Without a readable DMI UUID (not root, or a placeholder) vmId itself names the node.
  FakeHost bare;
  bare.dmi("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77");
  config = bare.config();
  config.base_urls["azure"] = fake.base_url();
  d = run_cascade(config);
  REQUIRE(d.identity);
  CHECK(d.identity->uuid.str() == "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
}

TEST_CASE("metadata answers that are not UTF-8 are carried as valid UTF-8") {
  auto instance = cairn::test::default_fake_instance("gcp");
  instance.hostname = "node\xff\xfe.c.project.internal";
  instance.zone = "europe-west1-\xc3";
  FakeHost host;
  FakeCloud fake("gcp", instance);
  auto d = run_cascade(config_for(host, "gcp", fake));
  REQUIRE(d.identity);
  CHECK(d.identity->source == "gcp");
  CHECK(d.identity->hostname == "node\xef\xbf\xbd\xef\xbf\xbd.c.project.internal");
  CHECK(d.identity->zone == "europe-west1-\xef\xbf\xbd");
  CHECK_NOTHROW((void)cairn::identity::discovery_to_json(d).dump());
}
