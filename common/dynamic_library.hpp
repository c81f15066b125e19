// A C library loaded on first use with dlopen(3) instead of linked: the agent carries
// libcryptsetup, libfdisk, tpm2-tss and libarchive only where a stage needs them, so the
// initramfs and the service loop's memory hold none of them otherwise. The library file that
// binds the functions still speaks the library alone (STYLE.md 3): this only opens the file
// and resolves names into the caller's typed function pointers.
//
//   auto lib = DynamicLibrary::open("libfdisk.so.1", "partitioning", "install libfdisk1 on the node");
//   if (!lib) return fail(lib.error());
//   Missing missing;
//   lib->bind(table.fdisk_new_context, "fdisk_new_context", missing);
//   if (auto ok = missing.check("libfdisk.so.1", "install libfdisk1 2.36 or later"); !ok) ...
//
// The handle is never closed: the functions are used for the rest of the process's life.
#pragma once

#include <dlfcn.h>

#include <cstring>
#include <string>

#include "common/result.hpp"

namespace cairn {

// The names a library did not have, collected so one error names them all.
class MissingSymbols {
 public:
  void add(const char* name) { names_ += (names_.empty() ? "" : ", ") + std::string(name); }
  [[nodiscard]] Status check(const std::string& library, const std::string& hint) const {
    if (names_.empty()) return {};
    return fail(Errc::unavailable, library + " lacks " + names_, hint);
  }

 private:
  std::string names_;
};

class DynamicLibrary {
 public:
  // `needed_for` completes "<needed_for> needs <soname>" in the error when it is not there.
  static Result<DynamicLibrary> open(const char* soname, const std::string& needed_for, const std::string& hint) {
    void* handle = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      return fail(Errc::unavailable, needed_for + " needs " + soname + ": " + (why ? why : "not found"), hint);
    }
    return DynamicLibrary(handle);
  }

  // Resolves `name` into `fn` (a function pointer of the library's declared type, so a
  // mismatch with its header is a compile error at the caller); a missing name is noted.
  template <typename Fn>
  void bind(Fn& fn, const char* name, MissingSymbols& missing) const {
    void* sym = ::dlsym(handle_, name);
    if (sym == nullptr) missing.add(name);
    static_assert(sizeof fn == sizeof sym);
    std::memcpy(&fn, &sym, sizeof fn);  // object pointer -> function pointer, as dlsym(3) intends
  }

 private:
  explicit DynamicLibrary(void* handle) : handle_(handle) {}
  void* handle_;
};

}  // namespace cairn
