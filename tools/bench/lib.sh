# Shared by tools/bench/run and tools/bench/testssl (sourced, not run). Bench-only tools (nginx,
# testssl.sh, jq) are installed here on first use, not by tools/install-deps: the build and the
# test suite do not need them.

# bench_ensure_package COMMAND PACKAGE...: installs the Debian PACKAGEs unless COMMAND is found
# (also in /usr/sbin). A package's service is never started or enabled: a policy-rc.d that
# refuses every start is in place for the install (kept if the machine has one already), and a
# unit the install enabled under systemd is disabled again.
bench_ensure_package() {
  local cmd=$1
  shift
  if command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]]; then return 0; fi
  if [[ $(id -u) != 0 ]]; then
    echo "$(basename "$0"): needs '$cmd'; install it as root: apt-get install $*" >&2
    exit 69
  fi
  echo "$(basename "$0"): installing $* (Debian packages; the service stays off)" >&2
  local policy=/usr/sbin/policy-rc.d placed=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# tools/bench: no service starts during this install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    placed=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; } || rc=$?
  [[ -n $placed ]] && rm -f "$policy"
  if (( rc != 0 )); then
    echo "$(basename "$0"): apt-get install $* failed" >&2
    exit 69
  fi
  if [[ -d /run/systemd/system ]]; then
    local p
    for p in "$@"; do
      systemctl disable --now "$p.service" >/dev/null 2>&1 || true
    done
  fi
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]]
}

# A TCP port on 127.0.0.1 that nothing listens on now (for servers that cannot report the
# port they bound, as `--listen 127.0.0.1:0 --port-file` lets ours do).
bench_free_port() {
  local port i
  for i in $(seq 1 100); do
    port=$((20000 + RANDOM % 40000))
    if [[ -z $(ss -Htln "sport = :$port" 2>/dev/null) ]]; then
      echo "$port"
      return 0
    fi
  done
  echo "$(basename "$0"): no free port found" >&2
  return 1
}

# bench_wait_listening PORT PID LOG: until something listens on 127.0.0.1:PORT (30 s at most),
# failing early if PID exits.
bench_wait_listening() {
  local deadline=$((SECONDS + 30))
  until [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "$(basename "$0"): process $2 exited before listening on port $1:" >&2
      cat "$3" >&2 2>/dev/null || true
      return 1
    fi
    if (( SECONDS > deadline )); then
      echo "$(basename "$0"): nothing listens on port $1 after 30 s" >&2
      return 1
    fi
    sleep 0.1
  done
}
