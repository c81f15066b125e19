// The /persist flows with fakes: first boot, later boots, and above all what happens when the
// volume does not unlock (never a reformat, a critical event with the measured PCRs).
#include <doctest/doctest.h>

#include "agent/persist/token.hpp"
#include "agent/persist/volume.hpp"
#include "tests/unit/agent/persist_fakes.hpp"

using namespace cairn;
using namespace cairn::agent::persist;
using cairn::test::FakeCrypt;
using cairn::test::FakeEscrow;
using cairn::test::FakeHost;
using cairn::test::FakeTpm;

namespace {

struct Rig {
  FakeTpm tpm;
  FakeCrypt crypt;
  FakeHost host;
  FakeEscrow escrow;
  std::vector<protocol::Event> events;
  VolumeConfig config;
  VolumeDeps deps;
  Rig() {
    config.mount_point = "/persist";
    config.node_id = "node-1";
    deps.tpm = &tpm;
    deps.crypt = &crypt;
    deps.host = &host;
    deps.escrow = &escrow;
    deps.critical = [this](const protocol::Event& e) { events.push_back(e); };
    deps.now_rfc3339 = [] { return std::string("2026-11-30T12:00:00Z"); };
  }
  // A boot: the mappings of the previous one are gone.
  Result<VolumeOutcome> boot() {
    crypt.active.clear();
    return open_volume(config, deps);
  }
  // `volume-setup` run again within the same boot: what is open stays open.
  Result<VolumeOutcome> rerun() { return open_volume(config, deps); }
};

}  // namespace

TEST_CASE("first boot partitions, seals, formats LUKS2 with a cairn-tpm2 token, makes ext4 and mounts") {
  Rig r;
  auto out = r.boot();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::formatted);
  CHECK(r.host.partitions == 1);
  CHECK(r.tpm.seals == 1);
  CHECK(r.crypt.formats == 1);
  const auto& vol = r.crypt.volumes.at("/dev/vda1");
  auto token = find_token(vol.header, kTpmTokenType);
  REQUIRE(token.has_value());
  auto decoded = decode_tpm_token(*token);
  REQUIRE(decoded.has_value());
  CHECK(decoded->keyslot == 0);
  CHECK(decoded->sealed.policy.pcrs == std::vector<int>{7});
  CHECK(r.crypt.active.count("cairn-persist") == 1);
  CHECK(r.host.mkfs == std::vector<std::string>{"/dev/mapper/cairn-persist"});
  CHECK(r.host.fsck.empty());
  CHECK(r.host.mounts == std::vector<std::string>{"/dev/mapper/cairn-persist /persist"});
}

TEST_CASE("a later boot unseals and mounts after fsck, without formatting") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.crypt.active.clear();
  auto out = r.boot();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::opened);
  CHECK(r.crypt.formats == 1);
  CHECK(r.host.partitions == 1);
  CHECK(r.tpm.unseals == 1);
  CHECK(r.host.fsck == std::vector<std::string>{"/dev/mapper/cairn-persist"});
  CHECK(r.host.mkfs.size() == 1);
  CHECK(r.host.mounts.size() == 2);
}

TEST_CASE("a mounted /persist is left as it is") {
  Rig r;
  r.host.mounted = true;
  auto out = r.boot();
  REQUIRE(out.has_value());
  CHECK(out->action == VolumeOutcome::Action::already_mounted);
  CHECK(r.host.partitions == 0);
  CHECK(r.tpm.unseals == 0);
}

TEST_CASE("PCRs changed: no reformat, a critical event with the measured PCR values, the operator is told what to do") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.tpm.pcr_epoch = 1;  // firmware update, other boot loader, ...
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(out.error().message.find("PCR 7 (sha256) differ") != std::string::npos);
  CHECK(out.error().hint.find("persist reseal") != std::string::npos);
  CHECK(out.error().hint.find("--wipe") != std::string::npos);
  CHECK(r.crypt.formats == 1);  // never reformatted
  CHECK(r.host.mkfs.size() == 1);
  CHECK(r.host.mounts.size() == 1);
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0].severity == "critical");
  CHECK(r.events[0].kind == "persist.unlock_failed");
  auto pcrs = r.tpm.read_pcrs(PcrPolicy{});
  REQUIRE(pcrs.has_value());
  CHECK(r.events[0].message.find("7=" + (*pcrs)[0].sha256_hex) != std::string::npos);

  // The same failure on the next boot is the same episode: the same event id.
  REQUIRE_FALSE(r.boot().has_value());
  REQUIRE(r.events.size() == 2);
  CHECK(r.events[1].id == r.events[0].id);
  CHECK(r.crypt.formats == 1);
}

TEST_CASE("a volume sealed by another TPM is an unlock failure, not a first boot") {
  Rig r;
  REQUIRE(r.boot().has_value());
  FakeTpm other("tpm-b");
  r.deps.tpm = &other;
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(out.error().message.find("another TPM") != std::string::npos);
  CHECK(r.crypt.formats == 1);
  CHECK(r.events.size() == 1);
}

TEST_CASE("a damaged token or an unreadable header is an unlock failure: reported, never reformatted") {
  Rig r;
  REQUIRE(r.boot().has_value());
  auto& vol = r.crypt.volumes.at("/dev/vda1");
  SUBCASE("token JSON damaged") {
    vol.header.tokens[0].json = R"({"type":"cairn-tpm2","keyslots":["0"],"cairn-tpm2-blob":"@@@","cairn-tpm2-pcrs":[7],"cairn-tpm2-pcr-bank":"sha256"})";
    auto out = r.boot();
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error().code == Errc::refused);
    CHECK(out.error().message.find("cairn-tpm2-blob") != std::string::npos);
  }
  SUBCASE("token missing") {
    vol.header.tokens.clear();
    auto out = r.boot();
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error().message.find("no cairn-tpm2 token") != std::string::npos);
  }
  SUBCASE("header does not load") {
    vol.header.state = LuksHeader::State::unreadable;
    vol.header.detail = "checksum mismatch";
    auto out = r.boot();
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error().message.find("checksum mismatch") != std::string::npos);
  }
  CHECK(r.crypt.formats == 1);
  CHECK(r.events.size() == 1);
  CHECK(r.host.mkfs.size() == 1);
}

TEST_CASE("a key that opens no keyslot is an unlock failure") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.crypt.volumes.at("/dev/vda1").slots[0] = "something else";
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(out.error().message.find("no keyslot opens") != std::string::npos);
  CHECK(r.crypt.formats == 1);
  CHECK(r.events.size() == 1);
}

TEST_CASE("without device-mapper: a first boot writes nothing; a later boot still checks the key, then says why it stops") {
  Rig r;
  r.host.dm = false;
  auto first = r.boot();
  REQUIRE_FALSE(first.has_value());
  CHECK(first.error().code == Errc::unavailable);
  CHECK(first.error().message.find("device-mapper") != std::string::npos);
  CHECK(r.host.partitions == 0);
  CHECK(r.crypt.formats == 0);

  r.host.dm = true;
  REQUIRE(r.boot().has_value());
  r.host.dm = false;
  auto later = r.boot();
  REQUIRE_FALSE(later.has_value());
  CHECK(later.error().code == Errc::unavailable);
  CHECK(r.tpm.unseals == 1);
  CHECK(r.events.empty());
}

TEST_CASE("a TPM that cannot seal leaves the partition unformatted") {
  Rig r;
  r.tpm.fail_seal = true;
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(r.crypt.formats == 0);
}

TEST_CASE("a partition labelled cairn-persist but blank is a first boot that stopped early: it is formatted") {
  Rig r;
  r.host.partitioned = true;
  auto out = r.boot();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::formatted);
  CHECK(r.host.partitions == 0);
}

TEST_CASE("a partition labelled cairn-persist holding a filesystem is left alone") {
  Rig r;
  r.host.partitioned = true;
  r.host.partition_signature = "ext4";
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(out.error().message.find("ext4") != std::string::npos);
  CHECK(r.crypt.formats == 0);
}

TEST_CASE("a disk with other partitions or too small is refused before anything is written") {
  Rig r;
  SUBCASE("foreign partition") { r.host.foreign_partition = true; }
  SUBCASE("too small") { r.host.disk.size_bytes = 64ull << 20; }
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(r.host.partitions == 0);
  CHECK(r.crypt.formats == 0);
}

TEST_CASE("escrow mode: the control service's key opens the volume; the TPM is never used") {
  Rig r;
  r.config.key_source = KeySource::escrow;
  r.deps.tpm = nullptr;
  auto first = r.boot();
  REQUIRE_MESSAGE(first.has_value(), first.error().message);
  auto token = find_token(r.crypt.volumes.at("/dev/vda1").header, kEscrowTokenType);
  REQUIRE(token.has_value());
  CHECK(decode_escrow_token(*token)->node_id == "node-1");
  auto later = r.boot();
  REQUIRE(later.has_value());
  CHECK(later->action == VolumeOutcome::Action::opened);
  CHECK(r.escrow.fetches == 2);
  CHECK(r.tpm.seals == 0);
}

TEST_CASE("escrow unavailable or refused by control is not an unlock failure of the volume") {
  Rig r;
  r.config.key_source = KeySource::escrow;
  REQUIRE(r.boot().has_value());
  r.escrow.available = false;
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::unavailable);
  r.escrow.available = true;
  r.escrow.refused = true;
  auto refused = r.boot();
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
  CHECK(refused.error().message.find("client_cert_required") != std::string::npos);
  CHECK(r.events.empty());
  CHECK(r.crypt.formats == 1);
}

TEST_CASE("the key source is explicit: a TPM volume is not opened by escrow, nor an escrow volume by the TPM") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.config.key_source = KeySource::escrow;
  auto out = r.boot();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::config);
  CHECK(r.escrow.fetches == 0);

  Rig e;
  e.config.key_source = KeySource::escrow;
  REQUIRE(e.boot().has_value());
  e.config.key_source = KeySource::tpm;
  auto out2 = e.boot();
  REQUIRE_FALSE(out2.has_value());
  CHECK(out2.error().code == Errc::config);
  CHECK(e.tpm.unseals == 0);
}

TEST_CASE("after a PCR change, the recovery key reseals to the new PCRs and the next boot opens") {
  Rig r;
  REQUIRE(r.boot().has_value());
  auto recovery = add_recovery(r.config, r.deps);
  REQUIRE_MESSAGE(recovery.has_value(), recovery.error().message);
  CHECK(recovery->display.size() == 64 + 7);
  auto& vol = r.crypt.volumes.at("/dev/vda1");
  CHECK(find_token(vol.header, kRecoveryTokenType).has_value());
  CHECK(vol.slots.size() == 2);

  // A second recovery key is refused.
  auto again = add_recovery(r.config, r.deps);
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == Errc::refused);

  r.tpm.pcr_epoch = 1;
  REQUIRE_FALSE(r.boot().has_value());

  auto wrong = reseal(r.config, r.deps, recovery_passphrase("00000000-00000000"));
  REQUIRE_FALSE(wrong.has_value());
  CHECK(wrong.error().code == Errc::refused);

  // Typed in upper case with spaces instead of dashes: the same key.
  std::string typed = recovery->display;
  for (auto& c : typed) c = c == '-' ? ' ' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto slot = reseal(r.config, r.deps, recovery_passphrase(typed));
  REQUIRE_MESSAGE(slot.has_value(), slot.error().message);
  CHECK(*slot == 2);
  CHECK(r.crypt.removed == std::vector<int>{0});  // the old TPM keyslot is gone
  CHECK(vol.slots.size() == 2);
  auto token = find_token(vol.header, kTpmTokenType);
  REQUIRE(token.has_value());
  CHECK(decode_tpm_token(*token)->keyslot == 2);

  r.crypt.active.clear();
  auto out = r.boot();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::opened);
  CHECK(r.crypt.formats == 1);
}

TEST_CASE("volume-setup --wipe formats the existing volume anew; refused while mounted") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.host.mounted = true;
  auto refused = wipe_and_create(r.config, r.deps);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Errc::refused);
  CHECK(r.crypt.formats == 1);
  r.host.mounted = false;
  r.tpm.pcr_epoch = 3;  // the reason an operator wipes
  auto out = wipe_and_create(r.config, r.deps);
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::formatted);
  CHECK(r.crypt.formats == 2);
  CHECK(r.boot().has_value());
}

TEST_CASE("volume-setup re-run with the mapping open but not mounted continues: fsck and mount, no second unlock") {
  Rig r;
  REQUIRE(r.boot().has_value());
  // A later boot stopped after activation (mount failed, or the agent was killed).
  r.crypt.active.clear();
  r.host.fail_mount = true;
  auto stopped = r.boot();
  REQUIRE_FALSE(stopped.has_value());
  CHECK(r.crypt.active.count("cairn-persist") == 1);
  const int unseals = r.tpm.unseals;
  r.host.fail_mount = false;

  auto out = r.rerun();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::resumed);
  CHECK(action_name(out->action) == "resumed");
  CHECK(r.tpm.unseals == unseals);  // the key was proved when the mapping was opened
  CHECK(r.crypt.formats == 1);
  CHECK(r.host.fsck.back() == "/dev/mapper/cairn-persist");
  CHECK(r.host.mounts.back() == "/dev/mapper/cairn-persist /persist");

  // Open and mounted: reported as it is, nothing done.
  r.host.mounted = true;
  const auto mounts = r.host.mounts.size();
  auto again = r.rerun();
  REQUIRE(again.has_value());
  CHECK(again->action == VolumeOutcome::Action::already_mounted);
  CHECK(r.host.mounts.size() == mounts);
}

TEST_CASE("escrow mode: a re-run with the mapping open continues without fetching the key again") {
  Rig r;
  r.config.key_source = KeySource::escrow;
  r.deps.tpm = nullptr;
  REQUIRE(r.boot().has_value());
  REQUIRE(r.escrow.fetches == 1);
  auto out = r.rerun();
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::resumed);
  CHECK(r.escrow.fetches == 1);
}

TEST_CASE("a mapping of that name open on another volume is refused, naming it; nothing is mounted") {
  Rig r;
  REQUIRE(r.boot().has_value());
  r.crypt.active.clear();
  r.crypt.active["cairn-persist"] = "/dev/sdz";  // not a LUKS volume the fake knows
  const auto mounts = r.host.mounts.size();
  auto out = r.rerun();
  REQUIRE_FALSE(out.has_value());
  CHECK(out.error().code == Errc::refused);
  CHECK(out.error().message.find("open on another volume") != std::string::npos);
  CHECK(out.error().message.find("/dev/sdz") != std::string::npos);
  CHECK(out.error().hint.find("cryptsetup close cairn-persist") != std::string::npos);
  CHECK(r.host.mounts.size() == mounts);
}

TEST_CASE("volume-setup --wipe with the mapping open but not mounted closes it, then formats") {
  Rig r;
  REQUIRE(r.boot().has_value());
  auto out = wipe_and_create(r.config, r.deps);
  REQUIRE_MESSAGE(out.has_value(), out.error().message);
  CHECK(out->action == VolumeOutcome::Action::formatted);
  CHECK(r.crypt.formats == 2);
  CHECK(r.crypt.active.count("cairn-persist") == 1);
}
