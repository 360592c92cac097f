"""Table of one bench/pg_vs_sqlite.sh run: PostgreSQL against SQLite, case by case.

Usage: pg_vs_sqlite_summary.py TSV RUN_ID [--goal 0.70]

Ratios pair the two stores within each round (same case, same connection count), then take
the median over rounds, so slow drifts of the shared machine cancel out. "CPU ratio" compares
the server CPU time per answered request (SQLite's / PostgreSQL's, the database's own
processes counted for PostgreSQL): less sensitive to other load than req/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("tsv")
    p.add_argument("run_id")
    p.add_argument("--goal", type=float, default=0.70)
    args = p.parse_args()
    with open(args.tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, ln.rstrip("\n").split("\t"), strict=True)) for ln in f]
    rows = [r for r in rows if r["run_id"] == args.run_id and r.get("used", "1") == "1"]
    if not rows:
        sys.exit(f"no rows for run {args.run_id} in {args.tsv}")
    cell: dict[tuple[str, int, str, str], dict[str, str]] = {}
    keys: list[tuple[str, int]] = []
    for r in rows:
        key = (r["case"], int(r["conns"]))
        if key not in keys:
            keys.append(key)
        cell[(*key, r["round"], r["target"])] = r

    def per_req_us(r: dict[str, str]) -> float:
        # server CPU % of one core over the run, spread over its requests
        seconds = float(r["duration"].rstrip("s"))
        return float(r["srv_cpu_pct"]) / 100 * seconds / max(1, int(r["requests"])) * 1e6

    print(
        "Medians over rounds. ratio = PostgreSQL req/s / SQLite req/s in the same round; "
        "CPU µs/req = server CPU per answered request (for PostgreSQL including the database "
        "server's processes); CPU ratio = SQLite µs/req / PostgreSQL µs/req; other = CPU % "
        "of one core used by everything else on the machine during the PostgreSQL runs.\n"
    )
    print(
        "| case | conns | SQLite req/s | PostgreSQL req/s | ratio | SQLite p50 / p99 ms "
        "| PostgreSQL p50 / p99 ms | SQLite CPU µs/req | PostgreSQL CPU µs/req | CPU ratio "
        "| other CPU % | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdict = []
    for case, conns in keys:
        groups: dict[str, list[dict[str, str]]] = defaultdict(list)
        ratios, cpu_ratios = [], []
        rounds = sorted({k[2] for k in cell if k[0] == case and k[1] == conns}, key=int)
        for rnd in rounds:
            s = cell.get((case, conns, rnd, "sqlite"))
            g = cell.get((case, conns, rnd, "postgres"))
            for name, r in (("sqlite", s), ("postgres", g)):
                if r is not None:
                    groups[name].append(r)
            if s is not None and g is not None:
                ratios.append(float(g["rps"]) / float(s["rps"]))
                cpu_ratios.append(per_req_us(s) / per_req_us(g))

        def med(name: str, col: str, groups: dict[str, list[dict[str, str]]] = groups) -> float:
            return statistics.median(float(r[col]) for r in groups[name])

        def med_us(name: str, groups: dict[str, list[dict[str, str]]] = groups) -> float:
            return statistics.median(per_req_us(r) for r in groups[name])

        errors = sum(int(r["non2xx"]) for rs in groups.values() for r in rs)
        ratio = statistics.median(ratios) if ratios else float("nan")
        print(
            f"| {case} | {conns} | {med('sqlite', 'rps'):,.0f} | {med('postgres', 'rps'):,.0f} "
            f"| {ratio:.2f} | {med('sqlite', 'p50_ms'):.2f} / {med('sqlite', 'p99_ms'):.2f} "
            f"| {med('postgres', 'p50_ms'):.2f} / {med('postgres', 'p99_ms'):.2f} "
            f"| {med_us('sqlite'):.0f} | {med_us('postgres'):.0f} "
            f"| {statistics.median(cpu_ratios):.2f} | {med('postgres', 'other_cpu_pct'):.0f} "
            f"| {errors} |"
        )
        verdict.append(f"{case} c={conns}: {ratio:.2f}")
    met = all(float(v.rsplit(" ", 1)[1]) >= args.goal for v in verdict)
    print(
        f"\nGoal, PostgreSQL within {args.goal:.0%} of SQLite throughput: "
        f"{'met' if met else 'NOT met'} ({'; '.join(verdict)})"
    )


if __name__ == "__main__":
    main()
