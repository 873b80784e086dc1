#!/bin/sh
# Stands in for tollgate in the load harness (TOLLGATE_BIN=benches/reference-relay/stand-in.sh), to measure what a
# minimal relay reaches in the same scenarios: `run -c CONFIG` starts the reference relay (built next to this file
# as `relay`, see docs/BENCHMARKS.md "Tunnels") on the config's first listener; RELAY_MODE splice|copy (default
# splice), RELAY_SIZE the pipe or buffer size in bytes (default 1 MiB). Anything else prints a version line.
here=$(cd "$(dirname "$0")" && pwd)
[ "$1" = run ] || { echo "reference relay ${RELAY_MODE:-splice}"; exit 0; }
port=$(grep -o 'bind: "127.0.0.1:[0-9]*"' "$3" | head -1 | sed 's/.*://; s/"//')
exec "$here/relay" "$port" "${RELAY_MODE:-splice}" ${RELAY_SIZE:-}
