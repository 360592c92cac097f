#!/usr/bin/env bash
# Introspection benchmark: keystile's POST /oauth2/introspect (valid and unknown token) beside
# a "ceiling" (bench/ceiling_app.py: a trivial ASGI app on the same server stack, uvicorn +
# httptools + uvloop, 1 worker) and, optionally, peer servers, all in the same interleaved run.
#
# Usage: bench/introspect.sh            (or: make bench)
# Env knobs:
#   ROUNDS (3)            interleaved rounds; each round runs every target/case/conns once
#   DURATION (10s)        length of each wrk run
#   CONNS ("32 128")      wrk connection counts
#   THREADS (2)           wrk threads (never more than the connection count)
#   WARMUP (2s)           discarded wrk run per target and case before round 1 (0 = none)
#   TIMEOUT (10s)         wrk --timeout
#   KEYSTILE_ARGS ("")    extra `keystile serve` args, e.g. "--workers 2"
#   KEYSTILE_VARIANTS     several keystile servers in the same run, ';'-separated arg sets,
#                         e.g. "--workers 1;--workers 2" (default: one, with KEYSTILE_ARGS)
#   PG_VARIANTS ("")      keystile servers on PostgreSQL in the same run, ';'-separated arg
#                         sets like KEYSTILE_VARIANTS, e.g. "--workers 1;--workers 2" (each on
#                         a fresh schema of PG_DSN, provisioned like the SQLite database,
#                         dropped at the end); "" = none
#   PG_DSN (postgresql://root@127.0.0.1:5432/test)  where those schemas are made
#   CPU_PER_WORKER ("")   e.g. 0.4: every keystile target runs in a cgroup of its own whose CPU
#                         quota is its --workers count x this many cores (root; cgroup v1 cpu
#                         or v2), so "2 processes vs 1" measures the server's scaling, not a
#                         machine whose cores wrk and PostgreSQL share ("" = no limit)
#   CEILINGS (uvicorn)    ceiling servers, space-separated: uvicorn granian raw (granian must be
#                         installed in the venv; raw = keystile's fast-path protocol answering a
#                         constant, bench/ceiling_raw.py); the first one is the reference for ratios
#   PEERS ("")            peers from ../shared/peers to include: "authlib oidc"; they must be
#                         installed there (PEERS_RUN); started if not running, stopped after
#   PEERS_DIR (../shared/peers)  PEERS_RUN (/tmp/keystile-peers)
#   RESULTS_DIR (bench/results)  every run is appended to introspect.tsv there, and the
#                                table of the run is written to introspect-RUNID.md
#   MACHINE_QUIET_MAX (15)  before each run, after the servers are idle, wait up to this many
#                         seconds for other load on the (shared) machine to stop; the CPU
#                         used by others during each run is recorded anyway (other_cpu_pct)
#   MAX_OTHER (25)        a run during which the rest of the machine (not the server, not wrk)
#                         used more than this % of one core is recorded with used=0 and run
#                         again, at most RETRIES (2) times; the last try is used regardless
#                         (-1 = no limit)
#   DISTINCT_TOKENS (0)   > 0 adds a "distinct" case for keystile targets: this many live tokens,
#                         issued up front, introspected in turn (bench/introspect_many.lua); with
#                         more tokens than the fast path remembers (8,192) every answer is a
#                         fresh lookup
#   KEEP_WORK (0)         1 = keep the temporary directory (DB, logs, wrk outputs)
#   STRICT (0)            1 = exit 3 when the goals (ratio >= 0.70, p99 <= 5 ms, valid, c=32;
#                         issue 11: p99 <= 3x the ceiling's p99 at c=128) are not met
# The table's "p99 ratio" is p99 / the ceiling's p99 in the same round at the same connection
# count (median over rounds); non-2xx answers (e.g. 503s shed past --max-in-flight) are counted.
# Everything listens on 127.0.0.1 only. Only the processes this script starts are stopped, by
# the process-group id recorded when they were started.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
KEYSTILE="$VENV/bin/keystile"
HELPER=("$PY" "$HERE/introspect_helper.py")

ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10s}"; CONNS="${CONNS:-32 128}"
THREADS="${THREADS:-2}"; WARMUP="${WARMUP:-2s}"; TIMEOUT="${TIMEOUT:-10s}"
KEYSTILE_ARGS="${KEYSTILE_ARGS:-}"; KEYSTILE_VARIANTS="${KEYSTILE_VARIANTS:-$KEYSTILE_ARGS}"
CEILINGS="${CEILINGS:-uvicorn}"; PEERS="${PEERS:-}"
CPU_PER_WORKER="${CPU_PER_WORKER:-}"
PG_VARIANTS="${PG_VARIANTS:-}"; PG_DSN="${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/peers}"; PEERS_RUN="${PEERS_RUN:-/tmp/keystile-peers}"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"; KEEP_WORK="${KEEP_WORK:-0}"
DISTINCT_TOKENS="${DISTINCT_TOKENS:-0}"
MACHINE_QUIET_MAX="${MACHINE_QUIET_MAX:-15}"; MAX_OTHER="${MAX_OTHER:-25}"; RETRIES="${RETRIES:-2}"
RESOURCE=https://api.bench.test

command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl missing" >&2; exit 1; }
[ -x "$KEYSTILE" ] || { echo "no $KEYSTILE: run 'make install' first" >&2; exit 1; }
TIME_BIN=""; [ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

RUN_ID="$(date +%Y%m%dT%H%M%S)-$$"
WORK="$(mktemp -d /tmp/keystile-bench.XXXXXX)"
mkdir -p "$RESULTS_DIR"
RUN_TSV="$WORK/runs.tsv"
ALL_TSV="$RESULTS_DIR/introspect.tsv"
REPORT="$RESULTS_DIR/introspect-$RUN_ID.md"

# --- cleanup: only what we started -------------------------------------------------------
OWN_PGIDS=()      # process groups started by this script (setsid => pid == pgid)
STARTED_PEERS=()  # peers started here through their own start scripts
PG_SCHEMAS=()     # PostgreSQL schemas made here (PG_VARIANTS), dropped at the end
CGROUPS=()        # cgroups made here (CPU_PER_WORKER), removed at the end
FG_PID=""        # long foreground step (wrk, settle), run as `cmd & wait` so signals are seen
fg() { local rc=0; "$@" & FG_PID=$!; wait "$FG_PID" || rc=$?; FG_PID=""; return "$rc"; }
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  [ -z "$FG_PID" ] || kill -TERM "$FG_PID" 2>/dev/null || true
  for pg in "${OWN_PGIDS[@]}"; do
    kill -TERM -- "-$pg" 2>/dev/null || true
  done
  for pg in "${OWN_PGIDS[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  for p in "${STARTED_PEERS[@]}"; do
    PEERS_RUN="$PEERS_RUN" "$PEERS_DIR/stop.sh" "$p" >/dev/null 2>&1 || true
  done
  for cg in "${CGROUPS[@]}"; do
    for _ in $(seq 20); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
  done
  for schema in "${PG_SCHEMAS[@]}"; do pg_sql "DROP SCHEMA IF EXISTS $schema CASCADE" || true; done
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -15 "$f" >&2; }
    done
  fi
  if [ "$KEEP_WORK" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_sql() { # SQL: run on PG_DSN with its own connection
  "$PY" - "$PG_DSN" "$1" <<'PYEOF'
import asyncio, sys, asyncpg
async def main(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
PYEOF
}

# CPU_PER_WORKER: the cgroup filesystem's cpu controller, v2 (cpu.max) or v1 (cfs quota).
CG_ROOT=""; CG_V=0
if [ -n "$CPU_PER_WORKER" ]; then
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    CG_ROOT=/sys/fs/cgroup; CG_V=2
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
  elif [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    CG_ROOT=/sys/fs/cgroup/cpu; CG_V=1
  else
    echo "CPU_PER_WORKER needs the cgroup cpu controller (v1 or v2) at /sys/fs/cgroup" >&2; exit 1
  fi
  [ -w "$CG_ROOT" ] || { echo "CPU_PER_WORKER needs root (cannot write $CG_ROOT)" >&2; exit 1; }
fi
limit_cpu() { # INDEX WORKERS: move target INDEX's process group into a cgroup with WORKERS x quota
  local i=$1 workers=$2 cg quota pid
  cg="$CG_ROOT/keystile-bench-$$-$i"; mkdir "$cg"; CGROUPS+=("$cg")
  quota="$(awk -v w="$workers" -v c="$CPU_PER_WORKER" 'BEGIN { printf "%d", w * c * 100000 }')"
  if [ "$CG_V" = 2 ]; then echo "$quota 100000" >"$cg/cpu.max"
  else echo 100000 >"$cg/cpu.cfs_period_us"; echo "$quota" >"$cg/cpu.cfs_quota_us"; fi
  for pid in $(ps -o pid= -g "${T_PGID[$i]}"); do echo "$pid" >"$cg/cgroup.procs" 2>/dev/null || true; done
  echo "   ${T_NAME[$i]}: $(ps -o pid= -g "${T_PGID[$i]}" | wc -l) processes limited to $workers x $CPU_PER_WORKER cores ($cg)"
}

wait_port() { # PORT PID [SECONDS]
  local i=0
  while [ $i -lt $((${3:-30} * 10)) ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before listening on $1" >&2; return 1; }
    sleep 0.1; i=$((i + 1))
  done
  echo "timeout waiting for 127.0.0.1:$1" >&2; return 1
}

start_own() { # NAME PORT DIR CMD... -> runs CMD in DIR in its own session; sets LAST_PGID
  local name=$1 port=$2 dir=$3 pid; shift 3
  (cd "$dir" && exec setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null) &
  pid=$!
  OWN_PGIDS+=("$pid")
  wait_port "$port" "$pid" 30
  LAST_PGID="$(ps -o pgid= -p "$pid" | tr -d ' ')"
  [ "$LAST_PGID" = "$pid" ] || { echo "$name: pgid $LAST_PGID != pid $pid" >&2; exit 1; }
}

src_hash() {
  (cd "$ROOT" && find src -name '*.py' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-8)
}
code_version() {
  local rev dirty=""
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo nogit)"
  git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || dirty="+dirty"
  echo "$rev$dirty/src:$(src_hash)"
}

# --- targets ------------------------------------------------------------------------------
# Parallel arrays, one entry per target.
T_NAME=(); T_KIND=(); T_URL=(); T_TOKEN_URL=(); T_APP_AUTH=(); T_RS_AUTH=(); T_PGID=()
T_SERVER=(); T_TOKEN=(); T_CODE=()
add_target() { # NAME KIND URL TOKEN_URL APP_AUTH RS_AUTH PGID SERVER CODE
  T_NAME+=("$1"); T_KIND+=("$2"); T_URL+=("$3"); T_TOKEN_URL+=("$4"); T_APP_AUTH+=("$5")
  T_RS_AUTH+=("$6"); T_PGID+=("$7"); T_SERVER+=("$8"); T_CODE+=("$9"); T_TOKEN+=("")
}

# Peers first: fail before starting anything if one is missing.
declare -A PEER_PROC=([authlib]=authlib [oidc]=oidc-provider)
declare -A PEER_PORT=([authlib]=9103 [oidc]=9101)
declare -A PEER_TOKEN=([authlib]=/oauth/token [oidc]=/token)
declare -A PEER_INTRO=([authlib]=/oauth/introspect [oidc]=/token/introspection)
declare -A PEER_INSTALLED=(
  [authlib]="$PEERS_RUN/authlib-venv/bin/gunicorn"
  [oidc]="$PEERS_RUN/oidc-provider/node_modules/oidc-provider/package.json"
)
declare -A PEER_START=([authlib]=authlib/start.sh [oidc]=oidc-provider/start.sh)
for p in $PEERS; do
  [ -n "${PEER_PROC[$p]:-}" ] || { echo "unknown peer '$p' (known: authlib oidc)" >&2; exit 2; }
  [ -e "${PEER_INSTALLED[$p]}" ] || {
    echo "peer $p not installed in $PEERS_RUN: run PEERS_RUN=$PEERS_RUN $PEERS_DIR/${PEER_START[$p]%start.sh}install.sh" >&2
    exit 1
  }
done

echo "== keystile introspection benchmark, run $RUN_ID (work dir $WORK)"
IFS=';' read -r -a VARIANTS <<<"${KEYSTILE_VARIANTS:- }"
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(" ")
PG_LIST=()
[ -z "$(echo "$PG_VARIANTS" | xargs)" ] || IFS=';' read -r -a PG_LIST <<<"$PG_VARIANTS"
if [ ${#PG_LIST[@]} -gt 0 ]; then
  "$PY" -c 'import asyncpg' 2>/dev/null || {
    echo "asyncpg missing: $VENV/bin/pip install -e '.[postgres]'" >&2; exit 1; }
fi
read -r -a CEILING_LIST <<<"$CEILINGS"
NPORTS=$((${#VARIANTS[@]} + ${#PG_LIST[@]} + ${#CEILING_LIST[@]}))
read -r -a PORTS <<<"$("${HELPER[@]}" free-ports "$NPORTS")"
port_i=0

# Ceilings
first=1
for srv in "${CEILING_LIST[@]}"; do
  port=${PORTS[$port_i]}; port_i=$((port_i + 1))
  if [ $first = 1 ]; then name=ceiling; else name="ceiling-$srv"; fi
  case "$srv" in
    uvicorn)
      start_own "$name" "$port" "$HERE" "$VENV/bin/uvicorn" ceiling_app:app --host 127.0.0.1 \
        --port "$port" --http httptools --loop uvloop --workers 1 --no-access-log \
        --log-level warning
      desc="uvicorn $("$PY" -c 'import uvicorn; print(uvicorn.__version__)') httptools uvloop, 1 worker" ;;
    granian)
      [ -x "$VENV/bin/granian" ] || { echo "granian not installed: $VENV/bin/pip install granian" >&2; exit 1; }
      start_own "$name" "$port" "$HERE" "$VENV/bin/granian" --interface asgi --host 127.0.0.1 \
        --port "$port" --workers 1 --no-access-log --log-level warning ceiling_app:app
      desc="granian $("$VENV/bin/granian" --version 2>/dev/null | awk '{print $NF}'), 1 worker" ;;
    raw)
      start_own "$name" "$port" "$HERE" "$PY" "$HERE/ceiling_raw.py" "$port"
      desc="keystile fast-path protocol (uvicorn $("$PY" -c 'import uvicorn; print(uvicorn.__version__)') httptools uvloop, no ASGI), 1 worker" ;;
    *) echo "unknown ceiling server '$srv' (uvicorn|granian|raw)" >&2; exit 2 ;;
  esac
  path=/; [ "$srv" = raw ] && path=/oauth2/introspect  # the path the shortcut serves
  add_target "$name" ceiling "http://127.0.0.1:$port$path" "" "" "" "$LAST_PGID" "$desc" "-"
  echo "   $name: $desc on 127.0.0.1:$port"
  first=0
done

# keystile: a fresh database, an introspecting resource server and an app client.
(
  cd "$WORK"
  unset KEYSTILE_CONFIG
  "$KEYSTILE" client create rs-client --grant-type none --json --db "$WORK/keystile.db" \
    >"$WORK/rs-client.json"
  "$KEYSTILE" resource create "$RESOURCE" --client rs-client --json --db "$WORK/keystile.db" \
    >"$WORK/resource.json"
  "$KEYSTILE" client create app-client --scope "read write" --audience "$RESOURCE" \
    --json --db "$WORK/keystile.db" >"$WORK/app-client.json"
)
RS_SECRET="$("${HELPER[@]}" field client_secret <"$WORK/rs-client.json")"
APP_SECRET="$("${HELPER[@]}" field client_secret <"$WORK/app-client.json")"
KS_RS_AUTH="$("${HELPER[@]}" basic rs-client "$RS_SECRET")"
KS_APP_AUTH="$("${HELPER[@]}" basic app-client "$APP_SECRET")"
FIRST_KEYSTILE=""
for vi in "${!VARIANTS[@]}"; do
  args="$(echo "${VARIANTS[$vi]}" | xargs)"   # trim
  port=${PORTS[$port_i]}; port_i=$((port_i + 1))
  if [ ${#VARIANTS[@]} -eq 1 ]; then
    name=keystile; db="$WORK/keystile.db"
  else
    name="keystile${args:+[$args]}"; db="$WORK/keystile-$vi.db"
    "${HELPER[@]}" copy-db "$WORK/keystile.db" "$db"
  fi
  code="$(code_version)"
  # shellcheck disable=SC2086  # extra args are split on purpose
  # With --workers N > 1 keystile puts prometheus multiprocess files in a new /tmp dir unless
  # PROMETHEUS_MULTIPROC_DIR is set: give it one we remove (not with 1 worker: the variable
  # alone switches prometheus_client to its slower multiprocess values).
  prom=()
  if [[ "$args" =~ --workers[=\ ]+([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt 1 ]; then
    mkdir -p "$WORK/prom-$vi"; prom=(PROMETHEUS_MULTIPROC_DIR="$WORK/prom-$vi")
  fi
  start_own "keystile-$vi" "$port" "$WORK" env -u KEYSTILE_CONFIG -u PROMETHEUS_MULTIPROC_DIR \
    "${prom[@]}" "$KEYSTILE" serve --no-demo \
    --host 127.0.0.1 --port "$port" --log-level warning --db "$db" $args
  add_target "$name" keystile "http://127.0.0.1:$port/oauth2/introspect" \
    "http://127.0.0.1:$port/oauth2/token" "$KS_APP_AUTH" "$KS_RS_AUTH" "$LAST_PGID" \
    "keystile serve ${args:-(defaults)}" "$code"
  [ -n "$FIRST_KEYSTILE" ] || FIRST_KEYSTILE="$name"
  echo "   $name: keystile serve --no-demo --port $port --log-level warning $args (code $code)"
done

# keystile on PostgreSQL: each variant on a fresh schema with the same kind of clients (their
# own secrets), so the stores are compared under one load, in one run.
SEP="?"; [[ "$PG_DSN" == *\?* ]] && SEP="&"
for vi in "${!PG_LIST[@]}"; do
  args="$(echo "${PG_LIST[$vi]}" | xargs)"
  port=${PORTS[$port_i]}; port_i=$((port_i + 1))
  schema="keystile_bench_$$_$vi"
  pg_sql "CREATE SCHEMA $schema"; PG_SCHEMAS+=("$schema")
  db="$PG_DSN${SEP}search_path=$schema"
  (
    cd "$WORK"
    unset KEYSTILE_CONFIG
    "$KEYSTILE" db upgrade --db "$db" >/dev/null
    "$KEYSTILE" client create rs-client --grant-type none --json --db "$db" >"$WORK/pg-$vi-rs.json"
    "$KEYSTILE" resource create "$RESOURCE" --client rs-client --json --db "$db" >/dev/null
    "$KEYSTILE" client create app-client --scope "read write" --audience "$RESOURCE" \
      --json --db "$db" >"$WORK/pg-$vi-app.json"
  )
  rs_auth="$("${HELPER[@]}" basic rs-client "$("${HELPER[@]}" field client_secret <"$WORK/pg-$vi-rs.json")")"
  app_auth="$("${HELPER[@]}" basic app-client "$("${HELPER[@]}" field client_secret <"$WORK/pg-$vi-app.json")")"
  name="keystile-pg${args:+[$args]}"
  code="$(code_version)"
  prom=()
  if [[ "$args" =~ --workers[=\ ]+([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt 1 ]; then
    mkdir -p "$WORK/prom-pg-$vi"; prom=(PROMETHEUS_MULTIPROC_DIR="$WORK/prom-pg-$vi")
  fi
  # shellcheck disable=SC2086  # extra args are split on purpose
  start_own "keystile-pg-$vi" "$port" "$WORK" env -u KEYSTILE_CONFIG -u PROMETHEUS_MULTIPROC_DIR \
    "${prom[@]}" "$KEYSTILE" serve --no-demo \
    --host 127.0.0.1 --port "$port" --log-level warning --db "$db" $args
  add_target "$name" keystile "http://127.0.0.1:$port/oauth2/introspect" \
    "http://127.0.0.1:$port/oauth2/token" "$app_auth" "$rs_auth" "$LAST_PGID" \
    "keystile serve on PostgreSQL ${args:-(defaults)}" "$code"
  echo "   $name: keystile serve --no-demo --port $port --db PostgreSQL schema $schema $args (code $code)"
done

# Peers
PEER_APP_AUTH="$("${HELPER[@]}" basic app-client app-secret)"
PEER_RS_AUTH="$("${HELPER[@]}" basic rs-client rs-secret)"
for p in $PEERS; do
  proc=${PEER_PROC[$p]}; pidf="$PEERS_RUN/pids/$proc.pid"
  if ! { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }; then
    PEERS_RUN="$PEERS_RUN" "$PEERS_DIR/${PEER_START[$p]}" >"$WORK/peer-$p.log" 2>&1 || {
      cat "$WORK/peer-$p.log" >&2; exit 1; }
    STARTED_PEERS+=("$proc")
  fi
  base="http://127.0.0.1:${PEER_PORT[$p]}"
  ver="$(grep -i -m1 -E '^(authlib|oidc-provider)' "$PEERS_DIR/${PEER_START[$p]%start.sh}versions-measured.txt" 2>/dev/null || true)"
  add_target "$p" peer "$base${PEER_INTRO[$p]}" "$base${PEER_TOKEN[$p]}" "$PEER_APP_AUTH" \
    "$PEER_RS_AUTH" "$(cat "$pidf")" "peer $proc${ver:+ ($ver)}" "-"
  echo "   $p: $base${PEER_INTRO[$p]} (pid group $(cat "$pidf"))"
done

ALL_PGIDS=("${T_PGID[@]}")
settle() {
  local g m
  fg "${HELPER[@]}" settle --max 60 --machine-max "$MACHINE_QUIET_MAX" "${ALL_PGIDS[@]}" \
    >"$WORK/settle.txt"
  read -r g m <"$WORK/settle.txt"
  if awk -v g="$g" -v m="$m" 'BEGIN { exit !(g > 2.0 || m > 1.5) }'; then
    echo "   (waited $g s for the servers to go idle, then $m s for other load on the machine)"
  fi
  return 0
}

UNKNOWN_TOKEN="unknown-token-0123456789abcdefghijklmnopqrstu"
# Fresh token for target $1 (by client_credentials), then curl checks of both cases.
refresh_and_check() {
  local i=$1 verbose=${2:-0} resp tok out code body
  if [ "${T_KIND[$i]}" = ceiling ]; then
    out="$(curl -sS --max-time 10 -d token=x -w '\n%{http_code}' "${T_URL[$i]}")"
    code="${out##*$'\n'}"; body="${out%$'\n'*}"
    [ "$code" = 200 ] && [ ${#body} = 60 ] || {
      echo "FAIL: ${T_NAME[$i]} answered HTTP $code '$body'" >&2; return 1; }
    [ "$verbose" = 1 ] && echo "   check ${T_NAME[$i]}: HTTP $code $body"
    return 0
  fi
  resp="$(curl -sS --max-time 30 -H "Authorization: ${T_APP_AUTH[$i]}" \
    -d grant_type=client_credentials --data-urlencode 'scope=read write' "${T_TOKEN_URL[$i]}")"
  tok="$("${HELPER[@]}" field access_token <<<"$resp")" || {
    echo "FAIL: token request to ${T_TOKEN_URL[$i]}: $resp" >&2; return 1; }
  T_TOKEN[$i]="$tok"
  for case_ in valid unknown; do
    if [ $case_ = valid ]; then tk="$tok"; else tk="$UNKNOWN_TOKEN"; fi
    out="$(curl -sS --max-time 30 -H "Authorization: ${T_RS_AUTH[$i]}" -d "token=$tk" \
      -d token_type_hint=access_token -w '\n%{http_code}' "${T_URL[$i]}")"
    code="${out##*$'\n'}"; body="${out%$'\n'*}"
    if [ $case_ = valid ]; then
      [[ "$code" = 200 && "$body" =~ \"active\":\ ?true ]] || {
        echo "FAIL: ${T_NAME[$i]} valid token: HTTP $code $body" >&2; return 1; }
    else
      [[ "$code" = 200 && "$body" =~ \"active\":\ ?false ]] || {
        echo "FAIL: ${T_NAME[$i]} unknown token: HTTP $code $body" >&2; return 1; }
    fi
    [ "$verbose" = 1 ] && echo "   check ${T_NAME[$i]} $case_: HTTP $code $body"
  done
  return 0
}

cases_of() {
  if [ "${T_KIND[$1]}" = ceiling ]; then echo post
  elif [ "${T_KIND[$1]}" = keystile ] && [ "$DISTINCT_TOKENS" -gt 0 ]; then echo valid unknown distinct
  else echo valid unknown; fi
}

issue_distinct() { # INDEX: DISTINCT_TOKENS live tokens, one per line, in $WORK/tokens-INDEX.txt
  "${HELPER[@]}" issue "${T_TOKEN_URL[$1]}" "${T_APP_AUTH[$1]}" "$DISTINCT_TOKENS" \
    >"$WORK/tokens-$1.txt"
}

run_wrk() { # INDEX CASE CONNS DURATION OUTFILE
  local i=$1 case_=$2 c=$3 d=$4 out=$5 tok t
  case "$case_" in valid) tok="${T_TOKEN[$i]}" ;; *) tok="$UNKNOWN_TOKEN" ;; esac
  t=$((c < THREADS ? c : THREADS))
  local script="$HERE/introspect.lua"
  [ "$case_" = distinct ] && script="$HERE/introspect_many.lua"
  local cmd=(wrk -t"$t" -c"$c" -d"$d" --timeout "$TIMEOUT" --latency -s "$script"
    "${T_URL[$i]}")
  if [ -n "$TIME_BIN" ]; then cmd=("$TIME_BIN" -f '%U %S' -o "$WORK/wrk-time.txt" "${cmd[@]}"); fi
  BENCH_TOKEN="$tok" BENCH_TOKENS_FILE="$WORK/tokens-$i.txt" BENCH_AUTH="${T_RS_AUTH[$i]}" \
    fg "${cmd[@]}" >"$out" 2>&1 || true
  WRK_THREADS=$t
}

{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])'); wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "stack: $("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("uvicorn", "httptools", "uvloop", "starlette")))')"
  echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION CONNS=\"$CONNS\" DISTINCT_TOKENS=$DISTINCT_TOKENS THREADS=$THREADS WARMUP=$WARMUP TIMEOUT=$TIMEOUT MAX_OTHER=$MAX_OTHER RETRIES=$RETRIES MACHINE_QUIET_MAX=$MACHINE_QUIET_MAX${CPU_PER_WORKER:+ CPU_PER_WORKER=$CPU_PER_WORKER}"
} | tee "$WORK/header.txt"

echo "== checks"
for i in "${!T_NAME[@]}"; do refresh_and_check "$i" 1; done
if [ -n "$CPU_PER_WORKER" ]; then
  echo "== CPU limits (CPU_PER_WORKER=$CPU_PER_WORKER cores per keystile process)"
  for i in "${!T_NAME[@]}"; do
    [ "${T_KIND[$i]}" = keystile ] || continue
    w=1; [[ "${T_SERVER[$i]}" =~ --workers[=\ ]+([0-9]+) ]] && w="${BASH_REMATCH[1]}"
    limit_cpu "$i" "$w"
  done
fi
if [ "$DISTINCT_TOKENS" -gt 0 ]; then
  echo "== issuing $DISTINCT_TOKENS tokens per keystile target for the \"distinct\" case"
  for i in "${!T_NAME[@]}"; do
    if [ "${T_KIND[$i]}" = keystile ]; then issue_distinct "$i"; fi
  done
fi

if [ "$WARMUP" != 0 ]; then
  echo "== warm-up ($WARMUP per target and case at 32 connections, discarded)"
  for i in "${!T_NAME[@]}"; do
    for case_ in $(cases_of "$i"); do run_wrk "$i" "$case_" 32 "$WARMUP" /dev/null; done
  done
fi

for round in $(seq "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  for i in "${!T_NAME[@]}"; do refresh_and_check "$i"; done
  for c in $CONNS; do
    for i in "${!T_NAME[@]}"; do
      for case_ in $(cases_of "$i"); do
        for try_ in $(seq 0 "$RETRIES"); do
          settle
          log="$WORK/wrk-r$round-$i-$case_-c$c-t$try_.txt"
          before="$("${HELPER[@]}" cpu "${T_PGID[$i]}")"
          rm -f "$WORK/wrk-time.txt"
          run_wrk "$i" "$case_" "$c" "$DURATION" "$log"
          after="$("${HELPER[@]}" cpu "${T_PGID[$i]}")"
          wrk_cpu=-1
          [ -s "$WORK/wrk-time.txt" ] && wrk_cpu="$(awk 'END {print $1 + $2}' "$WORK/wrk-time.txt")"
          last=(); [ "$try_" -lt "$RETRIES" ] || last=(--last-try)
          rc=0
          "${HELPER[@]}" record --run-id "$RUN_ID" --round "$round" --target "${T_NAME[$i]}" \
            --case "$case_" --conns "$c" --threads "$WRK_THREADS" --duration "$DURATION" \
            --log "$log" --server "${T_SERVER[$i]}" --code "${T_CODE[$i]}" \
            --cpu-before "$before" --cpu-after "$after" --wrk-cpu-s "$wrk_cpu" \
            --max-other "$MAX_OTHER" "${last[@]}" --tsv "$RUN_TSV" --tsv "$ALL_TSV" || rc=$?
          [ "$rc" = 10 ] || break
        done
      done
    done
  done
done
settle
# The tokens must still be good after the load (and the servers still up).
for i in "${!T_NAME[@]}"; do refresh_and_check "$i"; done

{
  echo "# keystile introspection benchmark, run $RUN_ID"
  echo
  sed 's/^/    /' "$WORK/header.txt"
  echo
  for i in "${!T_NAME[@]}"; do
    echo "- \`${T_NAME[$i]}\`: ${T_SERVER[$i]}${T_CODE[$i]:+, code ${T_CODE[$i]}} (${T_URL[$i]})"
  done
  echo
  "${HELPER[@]}" summary "$RUN_TSV" "$RUN_ID" --ref ceiling --check "$FIRST_KEYSTILE"
} >"$REPORT" 2>&1
echo
cat "$REPORT"
echo
echo "rows appended to $ALL_TSV; table in $REPORT"
if [ "${STRICT:-0}" = 1 ] && grep -q 'NOT met' "$REPORT"; then exit 3; fi
