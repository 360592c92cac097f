"""Small helpers for bench/introspect.sh (stdlib only, run with the project's venv python).

Subcommands:
  field KEY               print KEY of the JSON object read from stdin
  basic ID SECRET         print an HTTP Basic header value (RFC 6749 2.3.1 form-encoding)
  free-ports N            print N free TCP ports on 127.0.0.1 (9104-9109 first, then 9120-9199)
  copy-db SRC DST         copy a SQLite database with the online backup API
  settle PGID...          wait until those groups (then the machine) are idle; print waits
  cpu PGID...             print "machine_busy machine_total groups" CPU clock ticks
  record ...              parse a wrk log, print one line, append a TSV row (see --help)
  summary TSV RUN_ID      print the table of medians for one run (markdown)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote_plus

TICKS = os.sysconf("SC_CLK_TCK")

COLUMNS = [
    "run_id",
    "time",
    "round",
    "target",
    "case",
    "conns",
    "threads",
    "duration",
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "requests",
    "non2xx",
    "sock_errors",
    "srv_cpu_pct",
    "wrk_cpu_pct",
    "other_cpu_pct",
    "server",
    "code",
    "used",
]


def cmd_field(args: argparse.Namespace) -> None:
    print(json.load(sys.stdin)[args.key])


def cmd_basic(args: argparse.Namespace) -> None:
    raw = f"{quote_plus(args.client_id)}:{quote_plus(args.secret)}".encode()
    print("Basic " + base64.b64encode(raw).decode())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def cmd_free_ports(args: argparse.Namespace) -> None:
    found: list[int] = []
    for port in [*range(9104, 9110), *range(9120, 9200)]:
        if _port_free(port):
            found.append(port)
            if len(found) == args.n:
                print(" ".join(map(str, found)))
                return
    sys.exit("not enough free ports in 9104-9109, 9120-9199")


def cmd_copy_db(args: argparse.Namespace) -> None:
    src = sqlite3.connect(args.src)
    dst = sqlite3.connect(args.dst)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


def _group_ticks(pgids: set[int]) -> int:
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp session ... utime(12) stime(13)
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) in pgids:
            total += int(rest[11]) + int(rest[12])
    return total


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return total - idle, total


def cmd_cpu(args: argparse.Namespace) -> None:
    busy, total = _machine_ticks()
    print(busy, total, _group_ticks(set(args.pgids)))


def cmd_settle(args: argparse.Namespace) -> None:
    """Wait until the groups are idle, then (up to --machine-max s) until the machine is.

    Idle groups: together they burn <= ~5% of one core per group in two 0.5 s windows.
    Quiet machine: everything else burns <= 15% of one core in two 0.5 s windows (the
    machine is shared; foreign load is waited out for a while, then reported per run).
    Prints "GROUP_WAIT MACHINE_WAIT" in seconds.
    """
    pgids = set(args.pgids)
    limit = max(2, round(len(pgids) * 0.05 * TICKS * 0.5))
    machine_limit = limit + round(0.15 * TICKS * 0.5)
    start = time.monotonic()
    quiet = 0
    before = _group_ticks(pgids)
    while time.monotonic() - start < args.max:
        time.sleep(0.5)
        after = _group_ticks(pgids)
        quiet = quiet + 1 if after - before <= limit else 0
        before = after
        if quiet >= 2:
            break
    group_wait = time.monotonic() - start
    quiet = 0
    busy0 = _machine_ticks()[0]
    while time.monotonic() - start - group_wait < args.machine_max:
        time.sleep(0.5)
        busy1 = _machine_ticks()[0]
        quiet = quiet + 1 if busy1 - busy0 <= machine_limit else 0
        busy0 = busy1
        if quiet >= 2:
            break
    print(f"{group_wait:.1f} {time.monotonic() - start - group_wait:.1f}")


def _parse_result(log: Path) -> dict[str, str]:
    text = log.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {}
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    non2xx = "0"
    for ln in text.splitlines():
        if "Non-2xx" in ln:
            non2xx = ln.split()[-1]
    fields["non2xx"] = non2xx
    return fields


def cmd_record(args: argparse.Namespace) -> None:
    res = _parse_result(Path(args.log))
    if not res:
        head = Path(args.log).read_text(errors="replace").splitlines()[:3]
        print(f"!! wrk run failed for {args.target} {args.case} c={args.conns}: {head}")
        sys.exit(1)
    b0, t0, g0 = (int(v) for v in args.cpu_before.split())
    b1, t1, g1 = (int(v) for v in args.cpu_after.split())
    wall = (t1 - t0) / (os.cpu_count() or 1)  # ticks of one core during the run
    srv = 100.0 * (g1 - g0) / wall if wall else 0.0
    wrk_ticks = args.wrk_cpu_s * TICKS
    wrk = 100.0 * wrk_ticks / wall if wall and args.wrk_cpu_s >= 0 else float("nan")
    other = 100.0 * ((b1 - b0) - (g1 - g0) - wrk_ticks) / wall if wall else float("nan")
    errors = ",".join(f"{k[0]}{res[k]}" for k in ("connect", "read", "write", "timeout"))
    row = {
        "run_id": args.run_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "round": str(args.round),
        "target": args.target,
        "case": args.case,
        "conns": str(args.conns),
        "threads": str(args.threads),
        "duration": args.duration,
        "rps": res["rps"],
        "p50_ms": res["p50_ms"],
        "p90_ms": res["p90_ms"],
        "p99_ms": res["p99_ms"],
        "max_ms": res["max_ms"],
        "requests": res["requests"],
        "non2xx": res["non2xx"],
        "sock_errors": errors,
        "srv_cpu_pct": f"{srv:.0f}",
        "wrk_cpu_pct": f"{wrk:.0f}",
        "other_cpu_pct": f"{other:.0f}",
        "server": args.server,
        "code": args.code,
        "used": "1",
    }
    # Too much CPU used by others during the run (shared machine): if a retry is left,
    # keep the row for the record but mark it unused; the caller runs it again.
    retry = args.max_other >= 0 and other > args.max_other and not args.last_try
    if retry:
        row["used"] = "0"
    line = "\t".join(row[c] for c in COLUMNS)
    for tsv in args.tsv:
        path = Path(tsv)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            with path.open() as f:
                if f.readline().rstrip("\n").split("\t") != COLUMNS:  # older layout
                    path.rename(path.with_name(f"{path.name}.old-{int(time.time())}"))
                    new = True
        with path.open("a") as f:
            if new:
                f.write("\t".join(COLUMNS) + "\n")
            f.write(line + "\n")
    bad = int(res["non2xx"]) + sum(
        int(res[k]) for k in ("connect", "read", "write", "status", "timeout")
    )
    print(
        f"  r{args.round} {args.target:<18} {args.case:<8} c={args.conns:<4} "
        f"rps={float(res['rps']):>9.1f} p50={float(res['p50_ms']):>7.2f}ms "
        f"p99={float(res['p99_ms']):>8.2f}ms cpu srv={srv:.0f}% wrk={wrk:.0f}% "
        f"other={other:.0f}%"
        + (f"  ERRORS non2xx={res['non2xx']} {errors}" if bad else "")
        + ("  (other load: discarded, run again)" if retry else ""),
        flush=True,
    )
    if retry:
        sys.exit(10)


def _fmt(x: float, nd: int = 1) -> str:
    return f"{x:,.{nd}f}"


def _us_per_req(row: dict[str, str]) -> float:
    rps = float(row["rps"])
    return float(row["srv_cpu_pct"]) * 1e4 / rps if rps > 0 else float("inf")


def cmd_summary(args: argparse.Namespace) -> None:
    with open(args.tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, ln.rstrip("\n").split("\t"), strict=True)) for ln in f]
    rows = [r for r in rows if r["run_id"] == args.run_id and r.get("used", "1") == "1"]
    if not rows:
        sys.exit(f"no rows for run {args.run_id} in {args.tsv}")
    ref: dict[tuple[str, str], float] = {
        (r["round"], r["conns"]): float(r["rps"]) for r in rows if r["target"] == args.ref
    }
    ref_p99: dict[tuple[str, str], float] = {
        (r["round"], r["conns"]): float(r["p99_ms"]) for r in rows if r["target"] == args.ref
    }
    ref_us: dict[tuple[str, str], float] = {
        (r["round"], r["conns"]): _us_per_req(r) for r in rows if r["target"] == args.ref
    }
    groups: dict[tuple[str, str, int], list[dict[str, str]]] = defaultdict(list)
    order: list[tuple[str, str, int]] = []
    for r in rows:
        key = (r["target"], r["case"], int(r["conns"]))
        if key not in groups:
            order.append(key)
        groups[key].append(r)
    first_seen = {k: n for n, k in enumerate(order)}
    order.sort(key=lambda k: (k[2], first_seen[k]))
    print(
        f"Medians over rounds; ratio = median over rounds of req/s / req/s of "
        f"`{args.ref}` in the same round at the same connection count. CPU columns: % of one "
        f"core during the run (server process group, wrk, everything else on the machine); "
        f"µs/req = server CPU time per answered request; CPU ratio = median over rounds of "
        f"the ceiling's µs/req / the target's µs/req (less sensitive to other load); "
        f"p99 ratio = median over rounds of p99 / the reference's p99 in the same round at "
        f"the same connection count (issue 11: at most 3 at 128 connections).\n"
    )
    print(
        "| target | case | conns | runs | req/s | req/s min-max | p50 ms | p99 ms | p99 ratio "
        "| ratio | server CPU % | server CPU µs/req | CPU ratio | wrk CPU % | other CPU % "
        "| errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        rs = groups[key]
        rps = [float(r["rps"]) for r in rs]
        ratios = [
            float(r["rps"]) / ref[(r["round"], r["conns"])]
            for r in rs
            if ref.get((r["round"], r["conns"]))
        ]
        ratio = _fmt(statistics.median(ratios), 2) if ratios else "-"
        p99_ratios = [
            float(r["p99_ms"]) / ref_p99[(r["round"], r["conns"])]
            for r in rs
            if ref_p99.get((r["round"], r["conns"]))
        ]
        p99_ratio = _fmt(statistics.median(p99_ratios), 2) if p99_ratios else "-"
        errs = sum(int(r["non2xx"]) for r in rs)
        sock = [r["sock_errors"] for r in rs if r["sock_errors"] != "c0,r0,w0,t0"]
        err_txt = f"non2xx={errs}" + (f" sock={';'.join(sock)}" if sock else "")

        def med(col: str, rs: list[dict[str, str]] = rs) -> float:
            return statistics.median(float(r[col]) for r in rs)

        us_per_req = statistics.median(_us_per_req(r) for r in rs)
        cpu_ratios = [
            ref_us[(r["round"], r["conns"])] / _us_per_req(r)
            for r in rs
            if ref_us.get((r["round"], r["conns"])) and _us_per_req(r) > 0
        ]
        cpu_ratio = _fmt(statistics.median(cpu_ratios), 2) if cpu_ratios else "-"

        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | {_fmt(med('rps'))} "
            f"| {_fmt(min(rps), 0)}-{_fmt(max(rps), 0)} | {med('p50_ms'):.2f} "
            f"| {med('p99_ms'):.2f} | {p99_ratio} | {ratio} | {med('srv_cpu_pct'):.0f} "
            f"| {us_per_req:.0f} | {cpu_ratio} | {med('wrk_cpu_pct'):.0f} "
            f"| {med('other_cpu_pct'):.0f} | {err_txt} |"
        )
    if args.check:
        _check(groups, ref, args.check)
        _check_tail(groups, ref_p99, args.check)


def _check(
    groups: dict[tuple[str, str, int], list[dict[str, str]]],
    ref: dict[tuple[str, str], float],
    target: str,
) -> None:
    rs = groups.get((target, "valid", 32))
    if not rs:
        return
    ratio = statistics.median(
        float(r["rps"]) / ref[(r["round"], r["conns"])]
        for r in rs
        if ref.get((r["round"], r["conns"]))
    )
    p99 = statistics.median(float(r["p99_ms"]) for r in rs)
    ok_ratio, ok_p99 = ratio >= 0.70, p99 <= 5.0
    print(
        f"\nGoal, {target} valid token at 32 connections: ratio {ratio:.2f} "
        f"(goal >= 0.70: {'met' if ok_ratio else 'NOT met'}), p99 {p99:.2f} ms "
        f"(goal <= 5 ms: {'met' if ok_p99 else 'NOT met'})"
    )


def _check_tail(
    groups: dict[tuple[str, str, int], list[dict[str, str]]],
    ref_p99: dict[tuple[str, str], float],
    target: str,
) -> None:
    """Issue 11: p99 at 128 connections within 3x the reference's p99 in the same round."""
    for case in ("valid", "unknown"):
        rs = groups.get((target, case, 128))
        ratios = [
            float(r["p99_ms"]) / ref_p99[(r["round"], r["conns"])]
            for r in rs or []
            if ref_p99.get((r["round"], r["conns"]))
        ]
        if not ratios:
            continue
        ratio = statistics.median(ratios)
        shed = sum(int(r["non2xx"]) for r in rs or [])
        print(
            f"Goal, {target} {case} token at 128 connections: p99 ratio {ratio:.2f} "
            f"(goal <= 3: {'met' if ratio <= 3 else 'NOT met'}; non-2xx answers: {shed})"
        )


def cmd_issue(args: argparse.Namespace) -> None:
    """Print N live access tokens, one per line, from the client_credentials grant."""
    import httpx

    headers = {"Authorization": args.auth}
    form = {"grant_type": "client_credentials", "scope": "read write"}
    with httpx.Client(headers=headers, trust_env=False, timeout=30) as http:
        for _ in range(args.n):
            r = http.post(args.url, data=form)
            r.raise_for_status()
            print(r.json()["access_token"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("field")
    s.add_argument("key")
    s.set_defaults(func=cmd_field)
    s = sub.add_parser("basic")
    s.add_argument("client_id")
    s.add_argument("secret")
    s.set_defaults(func=cmd_basic)
    s = sub.add_parser("issue")
    s.add_argument("url")
    s.add_argument("auth", help="the whole Authorization header value")
    s.add_argument("n", type=int)
    s.set_defaults(func=cmd_issue)
    s = sub.add_parser("free-ports")
    s.add_argument("n", type=int)
    s.set_defaults(func=cmd_free_ports)
    s = sub.add_parser("copy-db")
    s.add_argument("src")
    s.add_argument("dst")
    s.set_defaults(func=cmd_copy_db)
    s = sub.add_parser("settle")
    s.add_argument("--max", type=float, default=60.0)
    s.add_argument("--machine-max", type=float, default=15.0)
    s.add_argument("pgids", type=int, nargs="+")
    s.set_defaults(func=cmd_settle)
    s = sub.add_parser("cpu")
    s.add_argument("pgids", type=int, nargs="+")
    s.set_defaults(func=cmd_cpu)
    s = sub.add_parser("record")
    for name in ("--run-id", "--target", "--case", "--duration", "--log", "--server", "--code"):
        s.add_argument(name, required=True)
    for name in ("--round", "--conns", "--threads"):
        s.add_argument(name, type=int, required=True)
    s.add_argument("--cpu-before", required=True)
    s.add_argument("--cpu-after", required=True)
    s.add_argument("--wrk-cpu-s", type=float, default=-1.0)
    s.add_argument("--tsv", action="append", default=[])
    s.add_argument("--max-other", type=float, default=-1.0, help="%% of a core; <0: no limit")
    s.add_argument("--last-try", action="store_true")
    s.set_defaults(func=cmd_record)
    s = sub.add_parser("summary")
    s.add_argument("tsv")
    s.add_argument("run_id")
    s.add_argument("--ref", default="ceiling")
    s.add_argument("--check", default="", help="target whose valid/32 figures to check")
    s.set_defaults(func=cmd_summary)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
