// The escrow of /persist keys (issue 15): one key per node, made on the first call, stored
// encrypted under the state dir's escrow.key and bound to the node id.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <map>

#include "common/crypto.hpp"
#include "common/fs.hpp"
#include "control/service/escrow.hpp"
#include "tests/support/temp_dir.hpp"

using namespace cairn;
using namespace cairn::control;

namespace {

// The Store's two escrow methods, in memory, with put_if_absent's "the stored one wins".
class MemoryEscrowStore final : public EscrowKeyStore {
 public:
  Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) override {
    ++puts;
    if (failing) return fail(Errc::io, "disk full");
    auto [it, inserted] = rows.emplace(std::string(node_id), std::string(sealed));
    return it->second;
  }
  Result<std::optional<std::string>> find(std::string_view node_id) override {
    if (failing) return fail(Errc::io, "disk full");
    auto it = rows.find(std::string(node_id));
    if (it == rows.end()) return std::optional<std::string>{};
    return std::optional<std::string>(it->second);
  }
  std::map<std::string, std::string> rows;
  int puts = 0;
  bool failing = false;
};

std::string master() { return std::string(32, '\x11'); }

}  // namespace

TEST_CASE("a node gets the same escrow key on every call, created on the first") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto first = escrow.key_for("node-a");
  REQUIRE(first.has_value());
  CHECK((*first)["node_id"] == "node-a");
  const auto key = (*first)["key"].get<std::string>();
  CHECK(key.size() == 64);
  auto second = escrow.key_for("node-a");
  REQUIRE(second.has_value());
  CHECK((*second)["key"] == key);
  CHECK(store.puts == 1);

  auto other = escrow.key_for("node-b");
  REQUIRE(other.has_value());
  CHECK((*other)["key"] != key);
}

TEST_CASE("the key is stored encrypted, bound to its node, and readable only with escrow.key") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto answer = escrow.key_for("node-a");
  REQUIRE(answer.has_value());
  const auto key_hex = (*answer)["key"].get<std::string>();
  const auto& row = store.rows.at("node-a");
  CHECK(row.starts_with("v1:"));
  CHECK(row.find(key_hex) == std::string::npos);

  // The row copied to another node's id does not decrypt: an error, not that node's key.
  store.rows["node-b"] = row;
  auto stolen = escrow.key_for("node-b");
  REQUIRE_FALSE(stolen.has_value());
  CHECK(stolen.error().http_status == 500);
  CHECK(stolen.error().body.message.find("does not decrypt") != std::string::npos);

  // Another master key cannot read it either.
  EscrowKeys wrong(store, std::string(32, '\x22'));
  CHECK_FALSE(wrong.key_for("node-a").has_value());
}

TEST_CASE("two first calls racing: the stored key wins for both") {
  MemoryEscrowStore store;
  EscrowKeys escrow(store, master());
  auto sealed = seal_escrow_key(master(), "node-a", std::string(32, 'k'));
  REQUIRE(sealed.has_value());
  // The other replica's put lands between our find and our put: emulate by pre-filling after find.
  class Racing final : public EscrowKeyStore {
   public:
    Racing(MemoryEscrowStore& inner, std::string theirs) : inner_(inner), theirs_(std::move(theirs)) {}
    Result<std::string> put_if_absent(std::string_view node_id, std::string_view sealed) override {
      (void)inner_.put_if_absent(node_id, theirs_);
      return inner_.put_if_absent(node_id, sealed);
    }
    Result<std::optional<std::string>> find(std::string_view node_id) override { return inner_.find(node_id); }
   private:
    MemoryEscrowStore& inner_;
    std::string theirs_;
  } racing(store, *sealed);
  EscrowKeys raced(racing, master());
  auto answer = raced.key_for("node-a");
  REQUIRE(answer.has_value());
  CHECK((*answer)["key"] == hex_encode(reinterpret_cast<const unsigned char*>(std::string(32, 'k').data()), 32));
}

TEST_CASE("a store failure is a 500 naming the node") {
  MemoryEscrowStore store;
  store.failing = true;
  EscrowKeys escrow(store, master());
  auto answer = escrow.key_for("node-a");
  REQUIRE_FALSE(answer.has_value());
  CHECK(answer.error().http_status == 500);
  CHECK(answer.error().body.message.find("node-a") != std::string::npos);
}

TEST_CASE("escrow.key is made once, 0600, and read back the same") {
  test::TempDir dir;
  const auto file = dir.path() / "escrow.key";
  auto made = load_or_create_escrow_master_key(file);
  REQUIRE(made.has_value());
  CHECK(made->size() == 32);
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto again = load_or_create_escrow_master_key(file);
  REQUIRE(again.has_value());
  CHECK(*again == *made);

  REQUIRE(write_file_atomic(file, "not hex\n", 0600).has_value());
  auto bad = load_or_create_escrow_master_key(file);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == Errc::config);
}
