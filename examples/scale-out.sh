#!/bin/sh
# Two keystile authorization servers over one PostgreSQL database, on one machine, as a
# load balancer in front of them would use them. Needs keystile with the server and postgres
# extras, and a PostgreSQL database it may create tables in. Ctrl-C stops both.
#
#   KEYSTILE_DB=postgresql://keystile@127.0.0.1/keystile sh examples/scale-out.sh
#
# Set KEYSTILE_REDIS_URL=redis://127.0.0.1:6379/0 as well to share throttling counters.
set -eu

: "${KEYSTILE_DB:=postgresql://keystile@127.0.0.1/keystile}"
export KEYSTILE_DB
# The public URL, the same on every instance: without it each would name its own address.
ISSUER="${ISSUER:-http://127.0.0.1:8000}"
PORTS="${PORTS:-8001 8002}"

keystile db upgrade  # ahead of a rollout; instances also apply migrations on start

pids=""
trap 'kill $pids 2>/dev/null || true' INT TERM EXIT
for port in $PORTS; do
    keystile serve --port "$port" --issuer "$ISSUER" --no-demo &
    pids="$pids $!"
done
wait
