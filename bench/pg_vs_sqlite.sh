#!/usr/bin/env bash
# Introspection on PostgreSQL vs SQLite, side by side in one interleaved run: the same
# `keystile serve` (N AS processes, --workers) on each store, the same clients, the same wrk
# load (bench/introspect.lua), ratio = PostgreSQL req/s / SQLite req/s in the same round.
# Reuses bench/introspect_helper.py (settle, cpu, record) from bench/introspect.sh; the table
# comes from bench/pg_vs_sqlite_summary.py (ratios paired per round and case).
# PostgreSQL runs on the same machine: its CPU is counted as the server's (server CPU % and
# µs/req include the database), so "CPU ratio" compares the whole cost of an answer.
#
# Usage: bench/pg_vs_sqlite.sh
# Env knobs:
#   PG_DSN (postgresql://root@127.0.0.1:5432/test)  a database where a schema of our own is
#                         created (keystile_bench_<pid>) and dropped at the end
#   WORKERS (2)           AS processes per store (keystile serve --workers)
#   ROUNDS (3) DURATION (10s) CONNS ("32 128") THREADS (2) WARMUP (2s) TIMEOUT (10s)
#   CASES ("valid unknown many")  introspected token: one live token in every request, an
#                         unknown one, or MANY_TOKENS live tokens in turn (no two
#                         concurrent requests share a token, so nothing can be deduplicated)
#   MANY_TOKENS (500)     live tokens issued per store for the "many" case
#   SERVE_ARGS ("")       extra `keystile serve` args for both stores
#   MAX_OTHER (25) RETRIES (2) MACHINE_QUIET_MAX (15)  as in bench/introspect.sh
#   RESULTS_DIR (bench/results)  rows appended to pg_vs_sqlite.tsv, the table of the run
#                         written to pg_vs_sqlite-RUNID.md
#   KEEP_WORK (0)         1 = keep the temporary directory (DB, logs, wrk outputs)
#   STRICT (0)            1 = exit 3 when PostgreSQL is below 70% of SQLite in any case
# Everything listens on 127.0.0.1 only; only the processes this script starts are stopped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
KEYSTILE="$VENV/bin/keystile"
HELPER=("$PY" "$HERE/introspect_helper.py")

PG_DSN="${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"
WORKERS="${WORKERS:-2}"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10s}"; CONNS="${CONNS:-32 128}"
THREADS="${THREADS:-2}"; WARMUP="${WARMUP:-2s}"; TIMEOUT="${TIMEOUT:-10s}"
CASES="${CASES:-valid unknown many}"; SERVE_ARGS="${SERVE_ARGS:-}"; MANY_TOKENS="${MANY_TOKENS:-500}"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"; KEEP_WORK="${KEEP_WORK:-0}"
MACHINE_QUIET_MAX="${MACHINE_QUIET_MAX:-15}"; MAX_OTHER="${MAX_OTHER:-25}"; RETRIES="${RETRIES:-2}"
RESOURCE=https://api.bench.test
SCHEMA="keystile_bench_$$"

command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl missing" >&2; exit 1; }
[ -x "$KEYSTILE" ] || { echo "no $KEYSTILE: run 'make install' first" >&2; exit 1; }
"$PY" -c 'import asyncpg' 2>/dev/null || {
  echo "asyncpg missing: $VENV/bin/pip install -e '.[postgres]'" >&2; exit 1; }
TIME_BIN=""; [ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

RUN_ID="$(date +%Y%m%dT%H%M%S)-$$"
WORK="$(mktemp -d /tmp/keystile-pgbench.XXXXXX)"
mkdir -p "$RESULTS_DIR"
RUN_TSV="$WORK/runs.tsv"
ALL_TSV="$RESULTS_DIR/pg_vs_sqlite.tsv"
REPORT="$RESULTS_DIR/pg_vs_sqlite-$RUN_ID.md"

pg() { # SQL: run on PG_DSN with its own connection
  "$PY" - "$PG_DSN" "$1" <<'EOF'
import asyncio, sys, asyncpg
async def main(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
EOF
}

OWN_PGIDS=()
SCHEMA_MADE=0
cleanup() {
  local rc=$? pg_
  trap - EXIT INT TERM
  for pg_ in "${OWN_PGIDS[@]}"; do kill -TERM -- "-$pg_" 2>/dev/null || true; done
  for pg_ in "${OWN_PGIDS[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pg_" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pg_" 2>/dev/null || true
  done
  [ "$SCHEMA_MADE" = 1 ] && { pg "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true; }
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/*.log; do [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -15 "$f" >&2; }; done
  fi
  if [ "$KEEP_WORK" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT PID
  local i=0
  while [ $i -lt 300 ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before listening on $1" >&2; return 1; }
    sleep 0.1; i=$((i + 1))
  done
  echo "timeout waiting for 127.0.0.1:$1" >&2; return 1
}

code_version() {
  local rev dirty=""
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo nogit)"
  git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || dirty="+dirty"
  echo "$rev$dirty"
}

echo "== keystile introspection: PostgreSQL vs SQLite, run $RUN_ID (work dir $WORK)"
pg "CREATE SCHEMA $SCHEMA"; SCHEMA_MADE=1
SEP="?"; [[ "$PG_DSN" == *\?* ]] && SEP="&"
declare -A DB=([sqlite]="$WORK/keystile.db" [postgres]="$PG_DSN${SEP}search_path=$SCHEMA")
TARGETS=(sqlite postgres)
read -r -a PORTS <<<"$("${HELPER[@]}" free-ports 2)"
declare -A PORT=([sqlite]=${PORTS[0]} [postgres]=${PORTS[1]})
declare -A PGID URL TOKEN_URL APP_AUTH RS_AUTH TOKEN

for t in "${TARGETS[@]}"; do
  db="${DB[$t]}"
  (
    cd "$WORK"
    unset KEYSTILE_CONFIG
    "$KEYSTILE" client create rs-client --grant-type none --json --db "$db" >"$WORK/$t-rs.json"
    "$KEYSTILE" resource create "$RESOURCE" --client rs-client --json --db "$db" >/dev/null
    "$KEYSTILE" client create app-client --scope "read write" --audience "$RESOURCE" \
      --json --db "$db" >"$WORK/$t-app.json"
  )
  RS_AUTH[$t]="$("${HELPER[@]}" basic rs-client "$("${HELPER[@]}" field client_secret <"$WORK/$t-rs.json")")"
  APP_AUTH[$t]="$("${HELPER[@]}" basic app-client "$("${HELPER[@]}" field client_secret <"$WORK/$t-app.json")")"
  port=${PORT[$t]}
  mkdir -p "$WORK/prom-$t"
  # shellcheck disable=SC2086  # extra args are split on purpose
  (cd "$WORK" && exec setsid env -u KEYSTILE_CONFIG PROMETHEUS_MULTIPROC_DIR="$WORK/prom-$t" \
    "$KEYSTILE" serve --no-demo --host 127.0.0.1 --port "$port" --log-level warning \
    --workers "$WORKERS" --db "$db" $SERVE_ARGS >"$WORK/$t.log" 2>&1 </dev/null) &
  pid=$!
  OWN_PGIDS+=("$pid")
  wait_port "$port" "$pid"
  PGID[$t]="$pid"
  URL[$t]="http://127.0.0.1:$port/oauth2/introspect"
  TOKEN_URL[$t]="http://127.0.0.1:$port/oauth2/token"
  echo "   $t: keystile serve --workers $WORKERS $SERVE_ARGS on 127.0.0.1:$port (db ${db%%\?*})"
done

UNKNOWN_TOKEN="unknown-token-0123456789abcdefghijklmnopqrstu"
refresh_and_check() { # TARGET [VERBOSE]: new token, then both cases checked with curl
  local t=$1 resp out code body tk
  resp="$(curl -sS --max-time 30 -H "Authorization: ${APP_AUTH[$t]}" \
    -d grant_type=client_credentials --data-urlencode 'scope=read write' "${TOKEN_URL[$t]}")"
  TOKEN[$t]="$("${HELPER[@]}" field access_token <<<"$resp")" || {
    echo "FAIL: $t token request: $resp" >&2; return 1; }
  for case_ in valid unknown; do
    if [ $case_ = valid ]; then tk="${TOKEN[$t]}"; else tk="$UNKNOWN_TOKEN"; fi
    out="$(curl -sS --max-time 30 -H "Authorization: ${RS_AUTH[$t]}" -d "token=$tk" \
      -d token_type_hint=access_token -w '\n%{http_code}' "${URL[$t]}")"
    code="${out##*$'\n'}"; body="${out%$'\n'*}"
    local want=false; [ $case_ = valid ] && want=true
    [[ "$code" = 200 && "$body" =~ \"active\":\ ?$want ]] || {
      echo "FAIL: $t $case_ token: HTTP $code $body" >&2; return 1; }
    [ "${2:-0}" = 1 ] && echo "   check $t $case_: HTTP $code $body"
  done
  return 0
}

issue_many() { # TARGET: MANY_TOKENS live tokens, one per line, in $WORK/TARGET-tokens.txt
  "$PY" "$HERE/introspect_helper.py" issue "${TOKEN_URL[$1]}" "${APP_AUTH[$1]}" "$MANY_TOKENS" \
    >"$WORK/$1-tokens.txt"
}

run_wrk() { # TARGET CASE CONNS DURATION OUTFILE
  local t=$1 case_=$2 c=$3 d=$4 out=$5 tok th script="$HERE/introspect.lua"
  case "$case_" in valid) tok="${TOKEN[$t]}" ;; *) tok="$UNKNOWN_TOKEN" ;; esac
  [ "$case_" = many ] && script="$HERE/introspect_many.lua"
  th=$((c < THREADS ? c : THREADS))
  local cmd=(wrk -t"$th" -c"$c" -d"$d" --timeout "$TIMEOUT" --latency -s "$script"
    "${URL[$t]}")
  if [ -n "$TIME_BIN" ]; then cmd=("$TIME_BIN" -f '%U %S' -o "$WORK/wrk-time.txt" "${cmd[@]}"); fi
  BENCH_TOKEN="$tok" BENCH_TOKENS_FILE="$WORK/$t-tokens.txt" BENCH_AUTH="${RS_AUTH[$t]}" \
    "${cmd[@]}" >"$out" 2>&1 || true
  WRK_THREADS=$th
}

PG_VERSION="$("$PY" - "$PG_DSN" <<'EOF'
import asyncio, sys, asyncpg
async def main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    print((await conn.fetchval("SHOW server_version")).split()[0])
    await conn.close()
asyncio.run(main(sys.argv[1]))
EOF
)"
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])'); wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'); PostgreSQL $PG_VERSION (local, same machine); asyncpg $("$PY" -c 'import asyncpg; print(asyncpg.__version__)')"
  echo "settings: WORKERS=$WORKERS ROUNDS=$ROUNDS DURATION=$DURATION CONNS=\"$CONNS\" THREADS=$THREADS WARMUP=$WARMUP SERVE_ARGS=\"$SERVE_ARGS\" MAX_OTHER=$MAX_OTHER"
} | tee "$WORK/header.txt"

echo "== checks"
for t in "${TARGETS[@]}"; do refresh_and_check "$t" 1; done
if [[ " $CASES " == *" many "* ]]; then
  echo "== issuing $MANY_TOKENS tokens per store for the \"many\" case"
  for t in "${TARGETS[@]}"; do issue_many "$t"; done
fi
ALL_PGIDS=("${PGID[@]}")
settle() {
  "${HELPER[@]}" settle --max 60 --machine-max "$MACHINE_QUIET_MAX" "${ALL_PGIDS[@]}" >/dev/null
}
if [ "$WARMUP" != 0 ]; then
  echo "== warm-up ($WARMUP per store and case at 32 connections, discarded)"
  for t in "${TARGETS[@]}"; do
    for case_ in $CASES; do run_wrk "$t" "$case_" 32 "$WARMUP" /dev/null; done
  done
fi

pg_groups() { ps -eo pgid=,comm= | awk '$2 == "postgres" {print $1}' | sort -u | xargs; }

code="$(code_version)"
for round in $(seq "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  for t in "${TARGETS[@]}"; do refresh_and_check "$t"; done
  for c in $CONNS; do
    for case_ in $CASES; do
      for t in "${TARGETS[@]}"; do
        for try_ in $(seq 0 "$RETRIES"); do
          settle
          log="$WORK/wrk-r$round-$t-$case_-c$c-t$try_.txt"
          # The server's CPU: keystile's process group, plus for PostgreSQL every postgres
          # process (each backend is its own process group), so the database's work counts
          # as the server's, not as "other load".
          groups=("${PGID[$t]}")
          [ "$t" = postgres ] && read -r -a more <<<"$(pg_groups)" && groups+=("${more[@]}")
          before="$("${HELPER[@]}" cpu "${groups[@]}")"
          rm -f "$WORK/wrk-time.txt"
          run_wrk "$t" "$case_" "$c" "$DURATION" "$log"
          after="$("${HELPER[@]}" cpu "${groups[@]}")"
          wrk_cpu=-1
          [ -s "$WORK/wrk-time.txt" ] && wrk_cpu="$(awk 'END {print $1 + $2}' "$WORK/wrk-time.txt")"
          last=(); [ "$try_" -lt "$RETRIES" ] || last=(--last-try)
          rc=0
          "${HELPER[@]}" record --run-id "$RUN_ID" --round "$round" --target "$t" \
            --case "$case_" --conns "$c" --threads "$WRK_THREADS" --duration "$DURATION" \
            --log "$log" --server "keystile serve --workers $WORKERS $SERVE_ARGS ($t)" \
            --code "$code" --cpu-before "$before" --cpu-after "$after" --wrk-cpu-s "$wrk_cpu" \
            --max-other "$MAX_OTHER" "${last[@]}" --tsv "$RUN_TSV" --tsv "$ALL_TSV" || rc=$?
          [ "$rc" = 10 ] || break
        done
      done
    done
  done
done
settle
for t in "${TARGETS[@]}"; do refresh_and_check "$t"; done

{
  echo "# keystile introspection on PostgreSQL vs SQLite, run $RUN_ID"
  echo
  sed 's/^/    /' "$WORK/header.txt"
  echo
  "$PY" "$HERE/pg_vs_sqlite_summary.py" "$RUN_TSV" "$RUN_ID"
} >"$REPORT" 2>&1
echo
cat "$REPORT"
echo
echo "rows appended to $ALL_TSV; table in $REPORT"
if [ "${STRICT:-0}" = 1 ] && grep -q '^Goal.*NOT met' "$REPORT"; then exit 3; fi
