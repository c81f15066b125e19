// A fake host for identity tests: a temp dir used as the Root, with helpers to lay out
// /proc/cmdline, fw-cfg and DMI files, and a Config pointing every cloud at nothing.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "identity/cascade.hpp"
#include "tests/support/temp_dir.hpp"

namespace cairn::test {

class FakeHost {
 public:
  // Writes <root>/<host_path> with content, creating parents.
  void write(const std::string& host_path, const std::string& content) const {
    const auto path = root() / host_path;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << content;
  }
  void dmi(const std::string& name, const std::string& value) const {
    write("sys/class/dmi/id/" + name, value + "\n");
  }
  void fw_cfg(const std::string& value) const {
    write("sys/firmware/qemu_fw_cfg/by_name/opt/org.cairn/instance_uuid/raw", value);
  }
  void cmdline(const std::string& value) const { write("proc/cmdline", value + "\n"); }

  [[nodiscard]] Root root() const { return Root(dir_.path()); }
  [[nodiscard]] std::filesystem::path identity_file() const {
    return dir_.path() / "persist/cairn/identity.json";
  }
  [[nodiscard]] identity::Config config() const {
    identity::Config config;
    config.root = root();
    config.persist_dir = dir_.path() / "persist";
    return config;
  }

 private:
  TempDir dir_;
};

}  // namespace cairn::test
