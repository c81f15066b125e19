// Fakes of the persist seams (Tpm, BlockCrypt, VolumeHost, EscrowSource) for the volume flow
// tests: in memory, recording what was done to them, so a test can prove what did NOT happen
// (no reformat after a failed unlock).
#pragma once

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/persist/volume.hpp"
#include "common/crypto.hpp"

namespace cairn::test {

using namespace cairn::agent::persist;

// A TPM whose "PCR 7" can change: a blob records the PCR state it was sealed under and the
// identity of the TPM that sealed it.
class FakeTpm final : public Tpm {
 public:
  explicit FakeTpm(std::string identity = "tpm-a") : identity_(std::move(identity)) {}
  Result<SealedKey> seal(const Secret& secret, const PcrPolicy& policy) override {
    ++seals;
    if (fail_seal) return fail(Errc::io, "fake TPM: seal failed");
    const std::string blob = identity_ + "|" + std::to_string(pcr_epoch) + "|" + std::to_string(next_++);
    store_[blob] = std::string(secret.view());
    return SealedKey{blob, policy};
  }
  Result<Secret> unseal(const SealedKey& sealed) override {
    ++unseals;
    const auto first = sealed.blob.find('|');
    if (first == std::string::npos) return fail(Errc::data, "fake TPM: malformed blob");
    if (sealed.blob.substr(0, first) != identity_) {
      return fail(Errc::refused, "fake TPM: sealed by another TPM");
    }
    const auto second = sealed.blob.find('|', first + 1);
    if (sealed.blob.substr(first + 1, second - first - 1) != std::to_string(pcr_epoch)) {
      return fail(Errc::refused, "the TPM refused to unseal the volume key: PCR 7 (sha256) differ");
    }
    auto it = store_.find(sealed.blob);
    if (it == store_.end()) return fail(Errc::refused, "fake TPM: unknown blob");
    return Secret(it->second);
  }
  Result<std::vector<PcrValue>> read_pcrs(const PcrPolicy& policy) override {
    std::vector<PcrValue> out;
    for (int p : policy.pcrs) out.push_back(PcrValue{p, sha256_hex(std::to_string(p) + "/" + std::to_string(pcr_epoch))});
    return out;
  }
  [[nodiscard]] std::string describe() const override { return "fake"; }
  [[nodiscard]] bool is_real() const override { return false; }

  int pcr_epoch = 0;  // bump to "extend a PCR"
  bool fail_seal = false;
  int seals = 0;
  int unseals = 0;

 private:
  std::string identity_;
  int next_ = 0;
  std::map<std::string, std::string> store_;
};

class FakeCrypt final : public BlockCrypt {
 public:
  struct Volume {
    LuksHeader header;
    std::map<int, std::string> slots;  // keyslot -> passphrase
  };
  Result<LuksHeader> inspect(const std::filesystem::path& device) override {
    auto it = volumes.find(device.string());
    if (it == volumes.end()) return LuksHeader{};
    return it->second.header;
  }
  Result<int> format(const std::filesystem::path& device, const Secret& passphrase, const std::string& label) override {
    ++formats;
    Volume v;
    v.header.state = LuksHeader::State::luks2;
    v.header.uuid = "uuid-" + std::to_string(formats);
    v.header.label = label;
    v.slots[0] = std::string(passphrase.view());
    v.header.active_keyslots = {0};
    volumes[device.string()] = v;
    return 0;
  }
  Result<int> add_keyslot(const std::filesystem::path& device, const Secret& existing,
                          const Secret& new_passphrase) override {
    auto& v = volumes.at(device.string());
    if (!opens(v, existing)) return fail(Errc::refused, "fake: no keyslot opens");
    int slot = 0;
    while (v.slots.count(slot) != 0) ++slot;
    v.slots[slot] = std::string(new_passphrase.view());
    v.header.active_keyslots.push_back(slot);
    return slot;
  }
  Status remove_keyslot(const std::filesystem::path& device, int keyslot) override {
    auto& v = volumes.at(device.string());
    v.slots.erase(keyslot);
    std::erase(v.header.active_keyslots, keyslot);
    removed.push_back(keyslot);
    return {};
  }
  Result<int> set_token(const std::filesystem::path& device, const std::string& json, std::optional<int> replace) override {
    auto& v = volumes.at(device.string());
    auto parsed = parse_json(json, "token");
    const std::string type = parsed ? parsed->value("type", "") : "";
    if (replace) {
      for (auto& t : v.header.tokens) {
        if (t.id == *replace) {
          t = LuksToken{*replace, type, json};
          return *replace;
        }
      }
    }
    int id = 0;
    for (const auto& t : v.header.tokens) id = std::max(id, t.id + 1);
    v.header.tokens.push_back(LuksToken{id, type, json});
    return id;
  }
  Result<int> check_passphrase(const std::filesystem::path& device, const Secret& passphrase) override {
    auto& v = volumes.at(device.string());
    for (const auto& [slot, p] : v.slots) {
      if (p == passphrase.view()) return slot;
    }
    return fail(Errc::refused, "fake: no keyslot opens with this key");
  }
  Status activate(const std::filesystem::path& device, const std::string& name, const Secret& passphrase) override {
    if (!check_passphrase(device, passphrase)) return fail(Errc::refused, "fake: wrong key");
    // As device-mapper does: the name is taken (libcryptsetup returns -EEXIST).
    if (active.count(name) != 0) return fail(Errc::io, "activating " + device.string() + " as /dev/mapper/" + name + ": File exists");
    active[name] = device.string();
    return {};
  }
  Status deactivate(const std::string& name) override {
    active.erase(name);
    return {};
  }
  Result<std::optional<ActiveMapping>> active_mapping(const std::string& name) override {
    auto it = active.find(name);
    if (it == active.end()) return std::optional<ActiveMapping>{};
    auto v = volumes.find(it->second);
    return std::optional<ActiveMapping>(
        ActiveMapping{v == volumes.end() ? std::string{} : v->second.header.uuid, it->second});
  }

  std::map<std::string, Volume> volumes;  // by device path
  std::map<std::string, std::string> active;  // open mappings: name -> device (clear(): a reboot)
  std::vector<int> removed;
  int formats = 0;

 private:
  static bool opens(const Volume& v, const Secret& s) {
    for (const auto& [slot, p] : v.slots) {
      if (p == s.view()) return true;
    }
    return false;
  }
};

// One disk /dev/vda of 8 GiB; a partition once `partition` ran.
class FakeHost final : public VolumeHost {
 public:
  Result<PersistTarget> locate(const DiskRule& /*rule*/, std::uint64_t min_bytes) override {
    if (disk.size_bytes < min_bytes) return fail(Errc::refused, "fake: disk too small");
    if (foreign_partition) return fail(Errc::refused, "disk /dev/vda holds partition 1 'data': left alone");
    return PersistTarget{disk, partitioned, 1, "/dev/vda1"};
  }
  Status partition(const PersistTarget& /*target*/) override {
    ++partitions;
    partitioned = true;
    return {};
  }
  Status wait_for_device(const std::filesystem::path& /*host_path*/) override { return {}; }
  Result<std::string> signature(const std::filesystem::path& /*host_path*/) override { return partition_signature; }
  bool device_mapper_available() override { return dm; }
  Status make_filesystem(const std::filesystem::path& host_path) override {
    mkfs.push_back(host_path.string());
    return {};
  }
  Status check_filesystem(const std::filesystem::path& host_path) override {
    fsck.push_back(host_path.string());
    return {};
  }
  Status mount(const std::filesystem::path& host_path, const std::filesystem::path& mount_point) override {
    if (fail_mount) return fail(Errc::io, "mounting " + host_path.string() + ": Input/output error");
    mounts.push_back(host_path.string() + " " + mount_point.string());
    return {};
  }
  Result<bool> is_mounted(const std::filesystem::path& /*mount_point*/) override { return mounted; }
  std::filesystem::path resolve(const std::filesystem::path& host_path) override { return host_path; }

  Disk disk{"vda", "/dev/vda", 8ull << 30, false, {}};
  bool partitioned = false;
  bool foreign_partition = false;
  bool dm = true;
  bool mounted = false;
  bool fail_mount = false;
  std::string partition_signature;
  int partitions = 0;
  std::vector<std::string> mkfs, fsck, mounts;
};

class FakeEscrow final : public EscrowSource {
 public:
  Result<Secret> fetch() override {
    ++fetches;
    if (!available) return fail(Errc::unavailable, "control did not answer");
    if (refused) return fail(Errc::refused, "POST /v1/persist/escrow-key: 401 client_cert_required");
    return Secret(key);
  }
  std::string key = std::string(32, 'e');
  bool available = true;
  bool refused = false;
  int fetches = 0;
};

}  // namespace cairn::test
