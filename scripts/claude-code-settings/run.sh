#!/usr/bin/env bash
# What the real Claude Code CLI does with managed settings served by tollgate (docs/managed-settings.md), observed
# on one machine, on loopback only. Not a test and not part of CI.
#
# It builds tollgate, starts upstream.py (a Messages API that logs the tools each request offers) and tollgate
# intercepting api.anthropic.com toward it, with `managed_settings.settings.permissions.deny` set to DENY (default
# ["Bash"]), and runs `claude -p` twice through the proxy (HTTPS_PROXY, NODE_EXTRA_CA_CERTS, a fake API key) in a
# scratch HOME. It prints the tools of each model request (Bash is absent under ["Bash"]), the audit records (the
# settings call answered 200 by tollgate, then 304 to the client's If-None-Match: the client's checksum is
# tollgate's), and the copy the client cached in ~/.claude/remote-settings.json.
#
#   scripts/claude-code-settings/run.sh                 # installs @anthropic-ai/claude-code@2.1.332 under target/
#   scripts/claude-code-settings/run.sh '["WebFetch"]'  # a control: Bash is offered again
#   CLAUDE=/path/to/claude scripts/claude-code-settings/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/scripts/claude-code-settings
version=2.1.332
deny=${1:-'["Bash"]'}

if [ -z "${CLAUDE:-}" ]; then
  npm_dir=$repo/target/claude-code-settings/npm
  CLAUDE=$npm_dir/node_modules/@anthropic-ai/claude-code/bin/claude.exe
  if ! "$CLAUDE" --version 2>/dev/null | grep -q "^$version "; then
    echo "installing @anthropic-ai/claude-code@$version into $npm_dir" >&2
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-save --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$version" >&2
    if ! "$CLAUDE" --version >/dev/null 2>&1; then
      CLAUDE=$(ls "$npm_dir"/node_modules/@anthropic-ai/claude-code-*/claude | head -n 1)
    fi
  fi
fi
echo "claude: $("$CLAUDE" --version)"

cargo build --locked --quiet
tollgate=$repo/target/debug/tollgate

work=$(mktemp -d /tmp/tollgate-claude-settings.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
proxy_port=$(free_port)
admin_port=$(free_port)
upstream_port=$(free_port)
mkdir -p "$work/home" "$work/project" "$work/ca"
cat >"$work/tollgate.yaml" <<YAML
listeners: [{name: proxy, bind: "127.0.0.1:$proxy_port"}]
admin: {bind: "127.0.0.1:$admin_port"}
auth: {anonymous: alice}
policy: {default: deny, allow: [api.anthropic.com]}
upstreams: {scripted: {url: "http://127.0.0.1:$upstream_port"}}
routing: [{when: {host: api.anthropic.com}, to: scripted}]
intercept: {ca: {cert: "$work/ca/ca.pem", key: "$work/ca/ca.key"}, hosts: [api.anthropic.com]}
managed_settings:
  settings: {permissions: {deny: $deny}}
audit: {file: {path: "$work/audit.jsonl"}}
state: {path: "$work/state"}
YAML
touch "$work/upstream.jsonl"
python3 "$here/upstream.py" "$upstream_port" "$work/upstream.jsonl" &
pids+=($!)
RUST_LOG=warn "$tollgate" run -c "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$admin_port/healthz" && break; sleep 0.1; done

echo "served: $("$tollgate" explain --settings --user alice -c "$work/tollgate.yaml" | sed -n 2p)"
for run in 1 2; do
  set +e
  (
    cd "$work/project"
    env -i PATH="$PATH" HOME="$work/home" TERM=dumb IS_SANDBOX=1 \
      HTTPS_PROXY="http://127.0.0.1:$proxy_port" NODE_EXTRA_CA_CERTS="$work/ca/ca.pem" \
      ANTHROPIC_API_KEY=sk-ant-api03-not-a-real-key DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 \
      timeout 120 "$CLAUDE" -p "Say hello" </dev/null >"$work/stdout" 2>"$work/stderr"
  )
  status=$?
  set -e
  echo "=== run $run: exit code $status; stdout: $(cat "$work/stdout"); stderr: $(head -c 500 "$work/stderr")"
done
echo "--- the tools of each model request"
jq -c 'select(.tools != null) | .tools' "$work/upstream.jsonl"
echo "--- tollgate's audit records of the settings calls"
jq -c 'select(.path == "/api/claude_code/settings") | {method, path, status, upstream}' "$work/audit.jsonl"
echo "--- ~/.claude/remote-settings.json"
cat "$work/home/.claude/remote-settings.json" 2>/dev/null || echo "(absent)"
