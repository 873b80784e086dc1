#!/usr/bin/env bash
# What `tollgate doctor` says and what the real Claude Code CLI prints for each broken step between a laptop and
# the model API through tollgate (docs/troubleshooting.md quotes these runs). Loopback only; not a test, not CI.
#
# It builds tollgate, starts the Messages upstream of scripts/claude-code-settings (upstream.py) and one tollgate
# with a plain proxy listener (Basic credentials), a TLS listener, a TLS listener that requires a client
# certificate, and interception of api.anthropic.com toward the upstream. For each case it runs `tollgate doctor`
# and `claude -p hi` (with a fake API key, in a scratch HOME) in the same environment, and prints both outputs,
# the CLI's exit code and how long it took. Cases where Claude Code would go around the proxy run in a network
# namespace with no network at all (`unshare -n`, root), as on a machine where only the proxy may reach out.
#
#   scripts/claude-code-doctor/run.sh            # every case; installs @anthropic-ai/claude-code@2.1.332 under target/
#   scripts/claude-code-doctor/run.sh bad_credentials no_client_certificate     # some cases
#   CLAUDE=/path/to/claude scripts/claude-code-doctor/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
version=2.1.332
limit=${CLAUDE_TIMEOUT:-150}

if [ -z "${CLAUDE:-}" ]; then
  npm_dir=$repo/target/claude-code-settings/npm
  CLAUDE=$npm_dir/node_modules/@anthropic-ai/claude-code/bin/claude.exe
  if ! "$CLAUDE" --version 2>/dev/null | grep -q "^$version "; then
    echo "installing @anthropic-ai/claude-code@$version into $npm_dir" >&2
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-save --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$version" >&2
  fi
fi
echo "claude: $("$CLAUDE" --version)"

cargo build --locked --quiet
tollgate=$repo/target/debug/tollgate

work=$(mktemp -d /tmp/tollgate-claude-doctor.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
proxy_port=$(free_port)
tls_port=$(free_port)
mtls_port=$(free_port)
admin_port=$(free_port)
upstream_port=$(free_port)
closed_port=$(free_port)
mkdir -p "$work/pki" "$work/other" "$work/icpt"
# The listener's certificate comes from its own CA, not the interception CA: an https:// proxy then needs both.
"$tollgate" ca init --dir "$work/pki" >/dev/null
"$tollgate" ca init --client --dir "$work/pki" >/dev/null
"$tollgate" cert server --name localhost --ip 127.0.0.1 --dir "$work/pki" >/dev/null
"$tollgate" ca init --dir "$work/other" >/dev/null
hash=$(printf 'secret' | "$tollgate" passwd)
cat >"$work/tollgate.yaml" <<YAML
listeners:
  - {name: proxy, bind: "127.0.0.1:$proxy_port"}
  - {name: proxy-tls, bind: "127.0.0.1:$tls_port", tls: {cert: "$work/pki/server.pem", key: "$work/pki/server.key"}}
  - name: proxy-mtls
    bind: "127.0.0.1:$mtls_port"
    tls: {cert: "$work/pki/server.pem", key: "$work/pki/server.key", client_ca: "$work/pki/clients-ca.pem", client_auth: required}
admin: {bind: "127.0.0.1:$admin_port"}
auth:
  users: [{name: alice, password_hash: "$hash"}]
policy: {default: deny, allow: [api.anthropic.com]}
upstreams: {scripted: {url: "http://127.0.0.1:$upstream_port"}}
routing: [{when: {host: api.anthropic.com}, to: scripted}]
intercept: {ca: {cert: "$work/icpt/ca.pem", key: "$work/icpt/ca.key"}, hosts: [api.anthropic.com]}
audit: {file: {path: "$work/audit.jsonl"}}
state: {path: "$work/state"}
YAML
touch "$work/upstream.jsonl"
python3 "$repo/scripts/claude-code-settings/upstream.py" "$upstream_port" "$work/upstream.jsonl" &
upstream_pid=$!
pids+=("$upstream_pid")
RUST_LOG=warn "$tollgate" run -c "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$admin_port/healthz" && break; sleep 0.1; done
# The upstream must listen before the first case, or the working case sees tollgate's 502.
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$upstream_port/" && break; sleep 0.1; done
cat "$work/icpt/ca.pem" "$work/pki/tollgate-ca.pem" >"$work/bundle.pem"

good_proxy="http://alice:secret@127.0.0.1:$proxy_port"
ca="$work/icpt/ca.pem"
# name | isolated (no network) | environment (KEY=VALUE …)
cases=(
  "working||HTTPS_PROXY=$good_proxy NODE_EXTRA_CA_CERTS=$ca"
  "no_proxy_variable|isolated|NODE_EXTRA_CA_CERTS=$ca"
  "no_proxy_covers_host|isolated|HTTPS_PROXY=$good_proxy NO_PROXY=.anthropic.com NODE_EXTRA_CA_CERTS=$ca"
  "proxy_unreachable||HTTPS_PROXY=http://alice:secret@127.0.0.1:$closed_port NODE_EXTRA_CA_CERTS=$ca"
  "https_proxy_untrusted||HTTPS_PROXY=https://alice:secret@127.0.0.1:$tls_port NODE_EXTRA_CA_CERTS=$ca"
  "https_proxy_working||HTTPS_PROXY=https://alice:secret@127.0.0.1:$tls_port NODE_EXTRA_CA_CERTS=$work/bundle.pem"
  "no_client_certificate||HTTPS_PROXY=https://alice:secret@127.0.0.1:$mtls_port NODE_EXTRA_CA_CERTS=$work/bundle.pem"
  "bad_credentials||HTTPS_PROXY=http://alice:wrong@127.0.0.1:$proxy_port NODE_EXTRA_CA_CERTS=$ca"
  "no_credentials||HTTPS_PROXY=http://127.0.0.1:$proxy_port NODE_EXTRA_CA_CERTS=$ca"
  "ca_not_set||HTTPS_PROXY=$good_proxy"
  "ca_missing_file||HTTPS_PROXY=$good_proxy NODE_EXTRA_CA_CERTS=$work/nope.pem"
  "ca_other||HTTPS_PROXY=$good_proxy NODE_EXTRA_CA_CERTS=$work/other/tollgate-ca.pem"
  "upstream_refused||HTTPS_PROXY=$good_proxy NODE_EXTRA_CA_CERTS=$ca"
)
wanted=("$@")

run_case() {
  local name=$1 isolated=$2 environment=$3
  local home=$work/home-$name
  mkdir -p "$home" "$work/project"
  local wrap=()
  [ -n "$isolated" ] && wrap=(unshare -n)
  # shellcheck disable=SC2086 # the environment is a list of words
  set +e
  env -i PATH="$PATH" HOME="$home" TERM=dumb $environment \
    "$tollgate" doctor --model-host api.anthropic.com >"$work/$name.doctor" 2>&1
  local start=$SECONDS
  (
    cd "$work/project"
    # shellcheck disable=SC2086
    env -i PATH="$PATH" HOME="$home" TERM=dumb IS_SANDBOX=1 $environment \
      ANTHROPIC_API_KEY=sk-ant-api03-not-a-real-key DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 \
      "${wrap[@]}" timeout "$limit" "$CLAUDE" -p hi </dev/null >"$work/$name.stdout" 2>"$work/$name.stderr"
  )
  echo "$? $((SECONDS - start))" >"$work/$name.status"
  set -e
}

selected=()
for entry in "${cases[@]}"; do
  name=${entry%%|*}
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  selected+=("$entry")
done
# Every case but the last runs at once (the CLI mostly waits on retries); the upstream is stopped for the last.
case_pids=()
for entry in "${selected[@]}"; do
  IFS='|' read -r name isolated environment <<<"$entry"
  [ "$name" = upstream_refused ] && continue
  run_case "$name" "$isolated" "$environment" &
  case_pids+=($!)
done
for pid in "${case_pids[@]}"; do wait "$pid" || true; done
for entry in "${selected[@]}"; do
  IFS='|' read -r name isolated environment <<<"$entry"
  [ "$name" = upstream_refused ] || continue
  kill "$upstream_pid" 2>/dev/null || true
  wait "$upstream_pid" 2>/dev/null || true
  run_case "$name" "$isolated" "$environment"
done

for entry in "${selected[@]}"; do
  IFS='|' read -r name isolated environment <<<"$entry"
  read -r code seconds <"$work/$name.status"
  echo "=================== $name ${isolated:+(no network)}"
  echo "environment: ${environment//$work/\$WORK}"
  echo "--- tollgate doctor"
  sed "s|$work|\$WORK|g" "$work/$name.doctor"
  echo "--- claude -p hi: exit code $code after ${seconds}s"
  echo "stdout: $(sed "s|$work|\$WORK|g" "$work/$name.stdout")"
  echo "stderr: $(head -c 2000 "$work/$name.stderr" | sed "s|$work|\$WORK|g")"
done
