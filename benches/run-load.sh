#!/usr/bin/env bash
# Runs the load harness (benches/load/) and writes the report to target/load-report.md.
#
#   benches/run-load.sh                 # full run: 5 s rounds, 3 rounds, 5,000 idle tunnels
#   benches/run-load.sh --quick         # 2 s rounds
#   benches/run-load.sh --only direct,squid,tinyproxy
#   benches/run-load.sh --quick --only tls,limits,redis,reload   # tollgate's own features
#   benches/run-load.sh --quick --only intercept,sse             # interception, against mitmproxy
#
# Arguments are passed to the harness unchanged. Installs squid, tinyproxy and redis-server (for
# scenario redis) with apt-get when they are missing and this runs as root; otherwise those
# columns and rows say "not installed". Installs mitmproxy (for scenarios intercept and sse) with
# pip into a virtualenv, target/mitmproxy-venv, when no mitmdump is found (MITMDUMP_BIN, the venv,
# PATH); python3 -m venv needs the python3-venv package, which apt-get installs when root.
set -euo pipefail

cd "$(dirname "$0")/.."

missing=()
command -v squid >/dev/null 2>&1 || [ -x /usr/sbin/squid ] || missing+=(squid)
command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/bin/tinyproxy ] || missing+=(tinyproxy)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        # The packages start system services; the harness runs its own instances (redis-server
        # on a free port, so one on 6379 would not disturb it, but it would take CPU).
        for svc in "${missing[@]}"; do
            systemctl stop "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
        done
    else
        echo "not installed: ${missing[*]} (run as root to install them with apt-get); continuing" >&2
    fi
fi

venv=target/mitmproxy-venv
if [ -z "${MITMDUMP_BIN:-}" ] && [ ! -x "$venv/bin/mitmdump" ] && ! command -v mitmdump >/dev/null 2>&1; then
    echo "installing mitmproxy into $venv ..." >&2
    if ! python3 -m venv "$venv" >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        rm -rf "$venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$venv" || true
    fi
    if [ -x "$venv/bin/pip" ] && "$venv/bin/pip" install -q mitmproxy; then
        "$venv/bin/mitmdump" --version | head -1 >&2
    else
        rm -rf "$venv"
        echo "not installed: mitmproxy (pip install into $venv failed); continuing" >&2
    fi
fi

cargo build --release

# 5,000 idle tunnels need about 10,000 descriptors in the harness and in the proxy.
# The harness also tries prlimit itself and reports whether the limit was raised.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p target
# Compile first, so that the report holds only the harness's output (and its errors).
cargo bench --bench load --no-run
cargo bench --bench load -- "$@" 2>&1 \
    | grep --line-buffered -v -E '^ +(Blocking|Compiling|Finished|Running|Locking|Updating|Downloading|Downloaded) ' \
    | tee target/load-report.md
echo "report: target/load-report.md" >&2
