#!/usr/bin/env bash
# keystile's gateway against Apache httpd + mod_auth_openidc (MAO), the gateway peer, in one
# interleaved run: same upstream, same authorization server (keystile over TLS, as MAO
# requires), same bearer token, same wrk load.
#
# Usage: bench/gateway_vs_mao.sh
#
# Uses the peer harness in ../shared/peers/gateway-mao (PEER_DIR): its setup.sh (apt
# packages apache2 + libapache2-mod-auth-openidc + wrk, a venv for the upstream; idempotent),
# as-keystile.sh (this checkout's keystile as a TLS AS on :9302, fresh SQLite DB),
# upstream.sh (trivial uvicorn + httptools app on :9320), mao-apache.sh (Apache event MPM:
# MAO with its introspection cache on :9310, without cache on :9311, plain ProxyPass on
# :9312) and bench-gateway.sh (wrk -t2 -c32, interleaved rounds, medians, ratio to direct).
# This script adds `keystile gateway` (1 worker unless GATEWAY_WORKERS, cache on, revocation
# events on) on :9330 in front of the same upstream, then shows what each gateway does with
# a revoked token that it has cached.
#
# Env knobs: BENCH_ROUNDS (3) BENCH_DURATION (10s) BENCH_CONNS (32) BENCH_THREADS (2)
#   BENCH_TARGETS ("direct proxy mao_cache")  the harness's own targets (add mao_nocache to
#                         see MAO introspecting every request: ~0.04 of direct)
#   GATEWAY_WORKERS (1)   `keystile gateway --workers`; GATEWAY_PORT (9330)
#   PEER_DIR (../shared/peers/gateway-mao)  RUN_DIR (/tmp/keystile-mao: TLS, logs, wrk output)
#   SKIP_SETUP (0)        1 = do not run the harness's setup.sh
# Everything listens on 127.0.0.1 (ports 9300-9399). Only the processes this script starts
# are stopped (the harness's stop.sh stops its own by their recorded PIDs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
KEYSTILE="$VENV/bin/keystile"
PEER_DIR="${PEER_DIR:-$ROOT/../shared/peers/gateway-mao}"
export RUN_DIR="${RUN_DIR:-/tmp/keystile-mao}"
export BENCH_ROUNDS="${BENCH_ROUNDS:-3}" BENCH_DURATION="${BENCH_DURATION:-10s}"
export BENCH_CONNS="${BENCH_CONNS:-32}" BENCH_THREADS="${BENCH_THREADS:-2}"
export BENCH_TARGETS="${BENCH_TARGETS:-direct proxy mao_cache}"
GATEWAY_WORKERS="${GATEWAY_WORKERS:-1}"
GATEWAY_PORT="${GATEWAY_PORT:-9330}"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"

[ -d "$PEER_DIR" ] || { echo "no peer harness at $PEER_DIR (set PEER_DIR)" >&2; exit 1; }
[ -x "$KEYSTILE" ] || { echo "no $KEYSTILE: run 'make install' first" >&2; exit 1; }

RUN_ID="$(date +%Y%m%dT%H%M%S)-$$"
GW_DIR="$RUN_DIR/keystile-gateway"
GW_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$GW_PID" ]; then
    kill -TERM -- "-$GW_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$GW_PID" 2>/dev/null || true
  fi
  bash "$PEER_DIR/stop.sh" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] && [ -s "$GW_DIR/gateway.log" ]; then
    echo "--- tail of $GW_DIR/gateway.log" >&2; tail -15 "$GW_DIR/gateway.log" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== keystile gateway vs Apache + mod_auth_openidc, run $RUN_ID ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
mkdir -p "$RUN_DIR"
step() { # LOG CMD...: run a harness step, its output in LOG (printed if it fails)
  local log=$1; shift
  "$@" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
}
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  step "$RUN_DIR/setup.out" bash "$PEER_DIR/setup.sh"
  sed -n '/== versions/,$p' "$RUN_DIR/setup.out"
fi
step "$RUN_DIR/as.out" env KEYSTILE="$KEYSTILE" bash "$PEER_DIR/as-keystile.sh" start
eval "$(bash "$PEER_DIR/as-keystile.sh" env)"
step "$RUN_DIR/upstream.out" bash "$PEER_DIR/upstream.sh" start
step "$RUN_DIR/apache.out" bash "$PEER_DIR/mao-apache.sh" start
grep -h '^==' "$RUN_DIR/as.out" "$RUN_DIR/upstream.out" "$RUN_DIR/apache.out" | head -6

mkdir -p "$GW_DIR"
cat >"$GW_DIR/gateway.toml" <<EOF
[gateway]
host = "127.0.0.1"
port = $GATEWAY_PORT
log_level = "warning"

[authorization_server]
issuer = "$AS_BASE"
client_id = "$RS_ID"
client_secret = "$RS_SECRET"
ca_file = "$CA_BUNDLE"

[cache]
max_ttl = 3600

[[routes]]
path = "/api"
upstream = "http://127.0.0.1:9320"
scopes = ["read"]
EOF
chmod 600 "$GW_DIR/gateway.toml"
# The AS's certificate is signed by the harness's local CA.
setsid "$KEYSTILE" gateway --config "$GW_DIR/gateway.toml" \
  --workers "$GATEWAY_WORKERS" >"$GW_DIR/gateway.log" 2>&1 </dev/null &
GW_PID=$!
GW_URL="http://127.0.0.1:$GATEWAY_PORT/api"
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/healthz" && break
  kill -0 "$GW_PID" 2>/dev/null || { echo "keystile gateway exited" >&2; exit 1; }
  sleep 0.1
done
echo "== keystile gateway pid $GW_PID on $GW_URL (workers $GATEWAY_WORKERS): $(curl -s "http://127.0.0.1:$GATEWAY_PORT/healthz")"

mkdir -p "$RESULTS_DIR"
BENCH_OUT="$RUN_DIR/bench" BENCH_EXTRA="keystile=$GW_URL" bash "$PEER_DIR/bench-gateway.sh" \
  | tee "$RESULTS_DIR/gateway_vs_mao-$RUN_ID.txt"

# What each gateway does with a token it has cached, once the token is revoked.
source "$PEER_DIR/common.sh"
MAO_URL="http://127.0.0.1:9310/protected/api"
token="$(get_token)"
status() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$1"; }
before="keystile $(status "$GW_URL"), mao_cache $(status "$MAO_URL")"
revoked="$(revoke_token "$token")"
sleep 0.05
after="keystile $(status "$GW_URL"), mao_cache $(status "$MAO_URL")"
{
  echo
  echo "revoked token (cached by both): before revocation $before; revocation $revoked;"
  echo "50 ms after: $after"
  echo "machine load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$RESULTS_DIR/gateway_vs_mao-$RUN_ID.txt"
