#!/usr/bin/env bash
# image/base/build's cache of the Debian tree (h-boothard): the apt sources hold bookworm,
# bookworm-updates and bookworm-security; a cached tree older than --max-age (default 7 days)
# is built again, --refresh builds it at once, --offline keeps a stale one with a warning; the
# build date and the package list (dpkg-query) land in the image's tree. mmdebstrap and
# cairn-module are fakes on PATH: nothing is downloaded, nothing packed.
set -euo pipefail
if [[ $(id -u) != 0 ]]; then
  echo "SKIP: image/base/build runs as root (device nodes, ownership)"
  exit 77
fi
for tool in dpkg-query strings ldconfig; do
  command -v "$tool" >/dev/null || { echo "SKIP: no $tool (image/base/build runs on Debian)"; exit 77; }
done
repo=$(cd "$(dirname "$0")/../../.." && pwd)
build="$repo/image/base/build"
work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-base-cache-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
failures=0
checks=0
check() {  # check DESCRIPTION COMMAND...: one line per check, the test fails at the end
  local what=$1
  shift
  checks=$((checks + 1))
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

# mmdebstrap: one line of arguments per call, a tar with what the builder reads.
printf '%s\n' '#!/usr/bin/env bash' \
  'echo "$*" >> "$FAKE_CALLS"' \
  'target=${@: -4:1}' \
  't=$(mktemp -d)' \
  'mkdir -p "$t/etc" "$t/usr/bin" "$t/usr/lib" "$t/var/lib/dpkg"' \
  'printf "ID=debian\nVERSION_ID=\"12\"\n" > "$t/usr/lib/os-release"' \
  'printf "root:x:19000:0:99999:7:::\n" > "$t/etc/shadow"' \
  'printf "Package: fakepkg\nStatus: install ok installed\nVersion: 1.2-3+deb12u4\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: fake\n\nPackage: systemd\nStatus: install ok installed\nVersion: 252.99-1~deb12u9\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: fake\n" > "$t/var/lib/dpkg/status"' \
  'tar -C "$t" -cf "$target" . && rm -rf "$t"' > "$work/bin/mmdebstrap"
# cairn-module pack ROOT ... --out PREFIX: keeps the tree as PREFIX.tree to look into.
printf '%s\n' '#!/usr/bin/env bash' \
  'root=$2; while [[ $# -gt 0 && $1 != --out ]]; do shift; done; out=$2' \
  'rm -rf "$out.tree"; cp -a "$root" "$out.tree"; : > "$out.erofs"; echo "{}" > "$out.manifest.json"' > "$work/bin/cairn-module"
chmod +x "$work/bin/mmdebstrap" "$work/bin/cairn-module"
export FAKE_CALLS="$work/calls"
: > "$FAKE_CALLS"

run() {  # run ARGS...: the builder with the fakes; its stderr in $work/err, exit code in $rc
  rc=0
  PATH="$work/bin:$PATH" "$build" --agent /bin/true --cairn-module "$work/bin/cairn-module" --cache "$work/cache" \
    --out "$work/out/base" "$@" > "$work/out.txt" 2> "$work/err" || rc=$?
}
calls() { wc -l < "$FAKE_CALLS"; }
age_cache_days() {  # age_cache_days N: the cached tree was built N days ago
  local f
  for f in "$work"/cache/base/*/built; do echo $(($(date +%s) - $1 * 86400 - 60)) > "$f"; done
}

run --offline
check "--offline without a cached tree exits 69" test "$rc" = 69
check "--offline without a cached tree downloads nothing" test "$(calls)" = 0

run
check "the first build succeeds" test "$rc" = 0
check "the first build runs mmdebstrap once" test "$(calls)" = 1
check "apt sources: bookworm" grep -q "deb http://deb.debian.org/debian bookworm main" "$FAKE_CALLS"
check "apt sources: bookworm-updates" grep -q "deb http://deb.debian.org/debian bookworm-updates main" "$FAKE_CALLS"
check "apt sources: bookworm-security" grep -q "deb http://deb.debian.org/debian-security bookworm-security main" "$FAKE_CALLS"
tree="$work/out/base.tree"
today=$(date -u +%Y-%m-%d)
check "base-release names the suites" grep -qx "DEBIAN_SUITES=bookworm bookworm-updates bookworm-security" "$tree/usr/lib/cairn/base-release"
check "base-release holds the build date" grep -q "^DEBIAN_BUILT=${today}T" "$tree/usr/lib/cairn/base-release"
check "base-packages lists the tree's packages with versions (dpkg-query)" grep -qx "fakepkg 1.2-3+deb12u4 amd64" "$tree/usr/lib/cairn/base-packages"
check "base-packages has every package" test "$(wc -l < "$tree/usr/lib/cairn/base-packages")" = 2
check "extension-release carries the build date" grep -q "^CAIRN_BASE_BUILT=${today}T" "$tree/usr/lib/extension-release.d/extension-release.base"
check "the version names the tree's date" grep -q "^module: base@12-$(date -u +%Y%m%d)-" "$work/out.txt"

run
check "a fresh cached tree is reused" test "$rc" = 0 -a "$(calls)" = 1
check "the reuse says how old the tree is" grep -q "from the cache (key .*, built ${today}T.*0 day(s) ago)" "$work/err"

age_cache_days 6
run
check "a 6-day-old tree is still reused (default --max-age 7)" test "$rc" = 0 -a "$(calls)" = 1

age_cache_days 8
run --offline
check "--offline keeps an 8-day-old tree" test "$rc" = 0 -a "$(calls)" = 1
check "--offline warns that the tree is stale" grep -q "warning: the cached Debian root filesystem is 8 day(s) old" "$work/err"
run --max-age 30
check "--max-age 30 keeps an 8-day-old tree" test "$rc" = 0 -a "$(calls)" = 1
run
check "an 8-day-old tree is built again" test "$rc" = 0 -a "$(calls)" = 2
check "the rebuild says why" grep -q "8 day(s) old (over --max-age 7): building it again" "$work/err"
check "the rebuilt tree is dated today" grep -q "^DEBIAN_BUILT=${today}T" "$tree/usr/lib/cairn/base-release"

run --refresh
check "--refresh builds a fresh tree again" test "$rc" = 0 -a "$(calls)" = 3
run --refresh --offline
check "--refresh --offline is refused (64)" test "$rc" = 64
run --max-age soon
check "--max-age that is not a number is refused (64)" test "$rc" = 64

echo "cairn-tests: passed=$((checks - failures)) failed=$failures skipped=0"
[[ $failures == 0 ]]
