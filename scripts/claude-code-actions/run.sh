#!/usr/bin/env bash
# What Claude Code shows when tollgate refuses an agent action, observed with the real CLI (docs/claude-code.md,
# "Agent actions"). Not a test and not part of CI: it documents, start to finish on one machine, on loopback only.
#
# It builds tollgate (release), starts upstream.py (a scripted Messages API) and tollgate as a gateway listener in
# front of it with an `actions` policy, and runs `claude -p` against tollgate (ANTHROPIC_BASE_URL, a per-user key in
# ANTHROPIC_API_KEY) in a scratch HOME and project:
#
#   a1  the model calls Bash `curl http://example.invalid/` in a streamed response; actions.deny has bash:run:curl *
#   a2  the same call in a whole (non-streamed) message: the upstream answers the streamed request with 404, which
#       makes Claude Code fall back to a non-streamed one
#   a1t the same, after a line of text
#   b   the model calls Read of secrets/token.txt; the policy allows it, the tool runs and the session is saved;
#       then actions.deny gains file:read:**/secrets/** (POST /admin/reload), and `claude -p --resume` (and
#       --continue) replays the result; then what the developer can do next: a new session, or the same one
#       resumed at the prompt before the call (--resume-session-at, not listed in `claude --help`)
#
# For each run it prints what claude printed (stdout, stderr), its exit code, the requests the upstream and tollgate
# saw, the audit records, and whether the tool ran.
#
#   scripts/claude-code-actions/run.sh            # installs @anthropic-ai/claude-code@2.1.332 under target/
#   CLAUDE=/path/to/claude scripts/claude-code-actions/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/scripts/claude-code-actions
version=2.1.332

if [ -z "${CLAUDE:-}" ]; then
  npm_dir=$repo/target/claude-code-actions/npm
  CLAUDE=$npm_dir/node_modules/@anthropic-ai/claude-code/bin/claude.exe
  if ! "$CLAUDE" --version 2>/dev/null | grep -q "^$version "; then
    echo "installing @anthropic-ai/claude-code@$version into $npm_dir" >&2
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-save --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$version" >&2
    # The package's postinstall copies the native binary over bin/claude.exe; when npm does not run install
    # scripts, the per-platform package holds the same binary.
    if ! "$CLAUDE" --version >/dev/null 2>&1; then
      CLAUDE=$(ls "$npm_dir"/node_modules/@anthropic-ai/claude-code-*/claude | head -n 1)
    fi
  fi
fi
echo "claude: $("$CLAUDE" --version)"

cargo build --release --locked --quiet
tollgate=$repo/target/release/tollgate

work=$(mktemp -d /tmp/tollgate-claude-actions.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gateway_port=$(free_port)
admin_port=$(free_port)
upstream_port=$(free_port)
admin_token=admin-$RANDOM$RANDOM
password=alice-pw-$RANDOM$RANDOM
hash=$(printf %s "$password" | "$tollgate" passwd)

project=$work/project
mkdir -p "$project/secrets" "$work/home"
echo "tok-1234-not-a-real-secret" >"$project/secrets/token.txt"
marker=$work/curl-ran

# The actions policy is the only thing that changes between runs: write_config DENY-LIST.
write_config() {
  cat >"$work/tollgate.yaml" <<EOF
listeners:
  - {name: gateway, bind: "127.0.0.1:$gateway_port", mode: gateway}
admin: {bind: "127.0.0.1:$admin_port", token: "$admin_token"}
auth:
  anonymous: deny
  users:
    - {name: alice, password_hash: "$hash", teams: [backend]}
teams: {backend: {}}
policy: {default: deny}
upstreams:
  scripted: {url: "http://127.0.0.1:$upstream_port", api_key: "sk-scripted-upstream"}
routing:
  - {when: {listener: gateway}, to: scripted}
actions:
  mode: enforce
  deny: $1
audit:
  file: {path: "$work/audit.jsonl", chain: true}
  on_failure: block               # records are on disk before the client has its answer
EOF
}
reload() {
  curl -sS -X POST -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$admin_port/admin/reload"
  echo
}
# The upstream's script: write_script JSON.
write_script() { printf '%s\n' "$1" >"$work/script.json"; }

wait_for() {
  local url=$1
  for _ in $(seq 100); do
    curl -s -o /dev/null "$url" && return 0
    sleep 0.1
  done
  echo "nothing answers at $url" >&2
  exit 1
}

write_config '["bash:run:curl *"]'
write_script '{}'
touch "$work/upstream.jsonl" "$work/audit.jsonl"
python3 "$here/upstream.py" --port "$upstream_port" --script "$work/script.json" --log "$work/upstream.jsonl" &
pids+=($!)
RUST_LOG=warn "$tollgate" run -c "$work/tollgate.yaml" >"$work/tollgate.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$upstream_port/"
wait_for "http://127.0.0.1:$admin_port/healthz"

# One run of claude -p with ARGS; prints what it printed, its exit code and what the upstream and tollgate saw.
run_claude() {
  local title=$1
  shift
  local upstream_before audit_before status
  upstream_before=$(wc -l <"$work/upstream.jsonl")
  audit_before=$(wc -l <"$work/audit.jsonl")
  echo
  echo "=== $title"
  echo "\$ claude -p $*"
  set +e
  (
    cd "$project"
    env -i PATH="$PATH" HOME="$work/home" TERM=dumb IS_SANDBOX=1 \
      ANTHROPIC_BASE_URL="http://127.0.0.1:$gateway_port" ANTHROPIC_API_KEY="alice:$password" \
      DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
      timeout 300 "$CLAUDE" -p --dangerously-skip-permissions "$@" </dev/null >"$work/stdout" 2>"$work/stderr"
  )
  status=$?
  set -e
  echo "--- stdout"
  cat "$work/stdout"
  echo "--- stderr"
  cat "$work/stderr"
  echo "--- exit code: $status"
  echo "--- the upstream saw (streamed or not, messages in the conversation, results in the last one -> its answer)"
  tail -n +"$((upstream_before + 1))" "$work/upstream.jsonl" |
    jq -r '"\(.method) \(.path)\(if .messages then " stream=\(.stream) messages=\(.messages) results=\(.tool_results)" else "" end) -> \(.answer)"'
  echo "--- tollgate's audit records"
  tail -n +"$((audit_before + 1))" "$work/audit.jsonl" |
    jq -c 'if .kind == "action" or .kind == "action_outcome" then
             {kind, action, target, decision, rule, outcome, tool_use_id}
           else {kind, method, path, status, decision, rule, error} end | with_entries(select(.value != null))'
}

echo
echo "######## a1: a denied Bash call in a streamed response (actions.deny: bash:run:curl *)"
write_script "{\"tool\": {\"name\": \"Bash\", \"input\": {\"command\": \"touch $marker && curl -sS http://example.invalid/\", \"description\": \"Fetch example.invalid\"}}}"
run_claude "a1 streamed" "Fetch http://example.invalid/ with curl"
[ -e "$marker" ] && echo "--- the tool RAN ($marker exists)" || echo "--- the tool did not run ($marker absent)"

echo
echo "######## a1t: the same, the call after a line of text (text is streamed at once; only the call is held)"
write_script "{\"text\": \"I will fetch it with curl.\", \"tool\": {\"name\": \"Bash\", \"input\": {\"command\": \"touch $marker && curl -sS http://example.invalid/\", \"description\": \"Fetch example.invalid\"}}}"
run_claude "a1t streamed, text first" "Fetch http://example.invalid/ with curl"
[ -e "$marker" ] && echo "--- the tool RAN ($marker exists)" || echo "--- the tool did not run ($marker absent)"

echo
echo "######## a2: the same call in a whole message (the streamed request gets 404; Claude Code falls back)"
write_script "{\"stream_404\": true, \"tool\": {\"name\": \"Bash\", \"input\": {\"command\": \"touch $marker && curl -sS http://example.invalid/\", \"description\": \"Fetch example.invalid\"}}}"
run_claude "a2 non-streamed" "Fetch http://example.invalid/ with curl"
[ -e "$marker" ] && echo "--- the tool RAN ($marker exists)" || echo "--- the tool did not run ($marker absent)"

echo
echo "######## b: the conversation carries the result of a call denied since"
session=$(python3 -c 'import uuid; print(uuid.uuid4())')
write_script "{\"tool\": {\"name\": \"Read\", \"input\": {\"file_path\": \"$project/secrets/token.txt\"}}}"
run_claude "b1 allowed: Read runs, the session is saved" --session-id "$session" "Show me secrets/token.txt"
echo
echo "--- actions.deny gains file:read:**/secrets/**; POST /admin/reload:"
write_config '["bash:run:curl *", "file:read:**/secrets/**"]'
reload
write_script '{}'
run_claude "b2 resumed: the next request replays the denied result" --resume "$session" "continue"
run_claude "b3 the same, with --continue" --continue "continue"
run_claude "b4 a new session instead" "Say hello"
# Or the same session, resumed at the prompt before the call (the transcript names each message's uuid).
transcript=$(ls "$work"/home/.claude/projects/*/"$session".jsonl)
prompt=$(jq -r 'select(.type == "user" and (.message.content | type) == "string") | .uuid' "$transcript" | head -n 1)
run_claude "b5 the same session, resumed at the prompt before the call" --resume "$session" --resume-session-at "$prompt" "Say hello"
