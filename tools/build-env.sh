# Sourced by tools/build, tools/test and tools/demo: where the build goes and how it is
# configured. CAIRN_BUILD_DIR picks the dir (relative to the checkout, or absolute).
# Under CI (CI set): warnings are errors, and everything is built and tested with
# AddressSanitizer and UBSan, in its own dir so a developer's build/ is not reconfigured.
if [[ -n "${CI:-}" ]]; then
  builddir=${CAIRN_BUILD_DIR:-build-ci}
  werror=true
  sanitize=address,undefined
  # -O0: with the sanitizers, -O2 costs 5x the compile time (56 s vs 11 s of CPU for one
  # CLI11 translation unit, measured with g++ 12) for tests that wait on I/O anyway.
  buildtype=debug
else
  builddir=${CAIRN_BUILD_DIR:-build}
  werror=false
  sanitize=none
  buildtype=debugoptimized
fi
builddir=$(realpath -m -- "$builddir")
# A sanitizer finding fails the test that hit it, with a stack trace.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
