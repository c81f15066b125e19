// Helpers the VM tests share (vm_disk_test, vm_tamper_test, vm_base_test): the files they write, the console
// checks, the registry as the guest sees it, and publishing a signed module with cairn-module.
#pragma once

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <openssl/evp.h>

#include "common/json.hpp"
#include "tests/support/process.hpp"
#include "tests/vm/qemu.hpp"

namespace cairn::test::vm {

// The guest's address of the registry (guestfwd to docker-registry on 127.0.0.1). The agent
// talks plain http only to a loopback registry, so a relay in the guest listens on
// 127.0.0.1:kRegistryGuestPort and forwards to this address (registry_relay_script()).
inline constexpr const char* kRegistryGuestIp = "10.0.2.101";
inline constexpr int kRegistryGuestPort = 5000;

inline std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

inline bool has(const std::string& log, const std::string& text) { return log.find(text) != std::string::npos; }

// The UUID of the LUKS2 header on GPT partition `index` (0: the first) of a raw disk file,
// read as the header lays it out (LUKS2 on-disk format: magic "LUKS\xba\xbe" at 0, uuid[40] at 168), so
// the host needs no device-mapper or loop device.
inline std::string luks_uuid(const std::filesystem::path& disk, std::size_t index = 0) {
  std::ifstream in(disk, std::ios::binary);
  auto read_at = [&](std::uint64_t offset, std::size_t n) {
    std::string b(n, '\0');
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(b.data(), static_cast<std::streamsize>(n));
    return in ? b : std::string();
  };
  auto le64 = [](const std::string& b, std::size_t at) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + static_cast<std::size_t>(i)]);
    return v;
  };
  const auto gpt = read_at(512, 92);
  if (gpt.size() != 92 || gpt.substr(0, 8) != "EFI PART") return "";
  const auto entry_size = le64(gpt, 84) & 0xffffffffU;  // u32 at 84, then the array's CRC
  if (entry_size < 128) return "";
  const auto entry = read_at(le64(gpt, 72) * 512 + index * entry_size, 128);  // entry array LBA
  if (entry.size() != 128) return "";
  const auto first_lba = le64(entry, 32);
  const auto hdr = read_at(first_lba * 512, 208);
  if (hdr.size() != 208 || hdr.substr(0, 6) != std::string("LUKS\xba\xbe", 6)) return "";
  return std::string(hdr.c_str() + 168);
}

// sha256 of a whole file (the disk image), hex.
inline std::string file_sha256(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx, buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

// A boot's fw-cfg entries: the machine's `base` ones plus this boot's `more`.
inline std::vector<FwCfg> with_fw_cfg(std::vector<FwCfg> base, std::initializer_list<FwCfg> more) {
  base.insert(base.end(), more);
  return base;
}

// /init says so when the agent ended (then it counts down and runs the boot again): no use
// waiting for more.
inline bool agent_exited(const Vm& vm) { return has(vm.serial(), "event=init.agent_exit"); }

// The guestfwd that takes the guest's relay to the registry on the host.
inline GuestForward registry_forward(const std::string& registry_host) {
  return {.guest_ip = kRegistryGuestIp, .guest_port = kRegistryGuestPort,
          .host_port = std::stoi(registry_host.substr(registry_host.rfind(':') + 1))};
}

// Shell lines (for a test hook or an exec task) that start the registry relay in the guest in
// the background, its pid in $relay, and wait (deadline 1 s) until it listens.
inline std::string registry_relay_script() {
  const std::string port = std::to_string(kRegistryGuestPort);
  return "nc -ll -p " + port + " -e nc " + kRegistryGuestIp + " " + port + " &\n"
         "relay=$!\n"
         "for i in 1 2 3 4 5 6 7 8 9 10; do netstat -ltn | grep -q ':" + port + " ' && break; sleep 0.1; done\n";
}

inline RunResult cairn_module(const std::filesystem::path& dir, std::vector<std::string> args) {
  args.insert(args.begin(), env_or_empty("CAIRN_MODULE"));
  return run_capture(args, dir, std::chrono::seconds(120));
}

// Packs `tree` as NAME VERSION, signs it with `key` and pushes it to
// REGISTRY/cairn/NAME:VERSION; returns the module manifest (REQUIREs each step).
inline Json publish_module(const std::filesystem::path& work, const std::string& registry_host, const std::filesystem::path& tree,
                           const std::string& name, const std::string& version, const std::filesystem::path& key) {
  const auto out = work / "out" / (name + "-" + version);
  const auto pack = cairn_module(work, {"pack", tree.string(), "--name", name, "--version", version, "--priority", "20",
                                        "--out", out.string()});
  REQUIRE_MESSAGE(pack.exit_code == 0, pack.err);
  const auto manifest = out.string() + ".manifest.json";
  const auto sign = cairn_module(work, {"sign", "--key", key.string(), manifest});
  REQUIRE_MESSAGE(sign.exit_code == 0, sign.err);
  const auto push = cairn_module(work, {"push", registry_host + "/cairn/" + name + ":" + version, "--plain-http", "--image",
                                        out.string() + ".erofs", "--manifest", manifest, "--signature", out.string() + ".sig"});
  REQUIRE_MESSAGE(push.exit_code == 0, std::string(push.out + push.err));
  auto j = parse_json(slurp(manifest), "manifest").value_or(Json(nullptr));
  REQUIRE(j.is_object());
  return j;
}

// The agent's agent.json for modules: the registry as the guest's relay, plain http, and
// `name` trusted with the key at /etc/cairn/KEY_REL.
inline void write_modules_agent_config(const std::filesystem::path& path, const std::string& name,
                                       const std::string& key_rel) {
  Json modules_section = Json::object();
  modules_section["registry"] = "127.0.0.1:" + std::to_string(kRegistryGuestPort) + "/cairn";
  modules_section["plain_http"] = true;
  modules_section["trust"] = Json::object();
  modules_section["trust"][name] = Json::array({key_rel});
  Json agent_config = Json::object();
  agent_config["modules"] = modules_section;
  write_text(path, dump_json(agent_config, -1));
}

}  // namespace cairn::test::vm
