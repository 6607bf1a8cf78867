"""Rewrites the README's performance tables from the newest results file of
`make bench` (bench/results/*.json), between markers such as
`<!-- bench:discovery -->` ... `<!-- /bench:discovery -->`, so that no figure in
them is copied by hand. tests/test_bench_report.py checks that the README says
what this renders from the newest committed results file.

    python scripts/bench_readme.py            # rewrite README.md
    python scripts/bench_readme.py --check    # exit 1 if README.md differs

Older results files (before h2load drove the discovery rows) render too, with
what they have.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE_RESULTS = RESULTS / "scale"  # `make bench-scale`'s
README = ROOT / "README.md"

Row = dict[str, Any]

# Row names across versions of bench.report (older files named etcd's row so).
GET, PICK, NOOP = "GetService", "PickEndpoint", "health.Check (no-op RPC)"
ETCD = ("etcd KV/Range (serializable)", "etcd Range (direct)")
GET_PY = "GetService (Python grpc.aio caller)"
GET_1PROC = "GetService, 1 process, 8 connections"
GET_2PROC = "GetService, --workers 2, 8 connections"
DRIVERS = {"h2load": "h2load", "python": "Python grpc.aio client"}
# bench.local_view's rows (hub_client's local resolution).
LOCAL_GET = "client-side lookup (hub_client local view)"
LOCAL_PICK = "client-side pick (hub_client local view)"
REMOTE_GET = "discover() RPC (hub_client remote mode)"
REMOTE_PICK = "pick() RPC (hub_client remote mode)"
ETCD_PY = "etcd KV/Range (Python EtcdStore caller)"
CHANGE_TO_VIEW = "registry change -> hub_client local view"
# bench.xds's state-change rows at 1,000 ADS streams, and the Watch rows beside them.
XDS_STATE_OP = "{change} -> EDS ACK from last of 1,000 ADS streams"
XDS_CHANGES = ("probe UNHEALTHY", "drain mark", "circuit forced open", "weight change")
XDS_WATCH_OPS = (
    "probe UNHEALTHY -> last of 1,000 WatchHealth (beside ADS)",
    "weight change -> last of 1,000 Watch streams (beside ADS)",
)


def _files(directory: Path, committed: bool) -> list[Path]:
    """The results files directly in ``directory``; with ``committed``, those git tracks."""
    if not committed:
        return list(directory.glob("*.json"))
    rel = directory.relative_to(ROOT).as_posix()
    out = subprocess.run(["git", "ls-files", rel], cwd=ROOT, capture_output=True, text=True)
    return [
        ROOT / p for p in out.stdout.split() if p.endswith(".json") and "/" not in p[len(rel) + 1 :]
    ]


def newest(committed: bool = False) -> Path:
    """The newest results file of `make bench` (names are UTC times); with
    ``committed``, the newest that git tracks."""
    files = _files(RESULTS, committed)
    if not files:
        raise SystemExit("no results file in bench/results")
    return max(files, key=lambda p: p.name)


def newest_scale(committed: bool = False) -> tuple[dict[str, Any], str] | None:
    """The newest results file of `make bench-scale` and its name (None: none yet)."""
    files = _files(SCALE_RESULTS, committed) if SCALE_RESULTS.is_dir() else []
    if not files:
        return None
    path = max(files, key=lambda p: p.name)
    return json.loads(path.read_text()), path.name


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


class Rows:
    def __init__(self, result: dict[str, Any]) -> None:
        self.rows: list[Row] = result.get("results", [])
        self.facts = {f["name"]: f for f in result.get("facts", [])}
        self.propagation: list[Row] = result.get("propagation", [])

    def get(self, op: str | tuple[str, ...], conc: int | str) -> Row | None:
        ops = (op,) if isinstance(op, str) else op
        return next((r for r in self.rows if r["op"] in ops and r["concurrency"] == conc), None)

    def series(self, op: str | tuple[str, ...], concs: tuple[Any, ...]) -> list[Row] | None:
        found = [self.get(op, c) for c in concs]
        return found if all(found) else None  # type: ignore[return-value]


def _ratios(rows: list[Row], base: str | tuple[str, ...], label: str) -> str:
    names = (base,) if isinstance(base, str) else base
    values = [next((v for k, v in r["ratios"].items() if k in names), None) for r in rows]
    if None in values:
        return ""
    return f"{label} " + " / ".join(f"{v:.2f}x" for v in values)


def _driver(rows: list[Row]) -> str:
    return DRIVERS[rows[0].get("driver", "python")]


def _unit(rows: list[Row]) -> str:
    return "streams" if rows[0].get("driver") == "h2load" else "callers"


def discovery(result: dict[str, Any], name: str) -> str:
    env = result["environment"]
    m = env.get("machine", {})
    rows = Rows(result)
    load = m.get("loadavg_before", [env["loadavg_start_end"][0]])[0]
    load_after = m.get("loadavg_after", [env["loadavg_start_end"][1]])[0]
    memory = f", {m['memory_mib'] / 1024:.0f} GiB" if m.get("memory_mib") else ""
    out = [
        f"From `bench/results/{name}` ({env['cores']} cores, {env['cpu']}{memory}; load "
        f"average {load} before, {load_after} after; {env['seconds_per_cell']:g} s per cell"
        + ("; `--quick`" if env.get("quick") else "")
        + "). Generated by `scripts/bench_readme.py`: not edited by hand.",
        "",
    ]
    if result.get("headline"):
        out += ["| the hub is judged on (throughput) | ratio |", "|---|---|"]
        for h in result["headline"]:
            v = h["by_concurrency"]
            text = h["note"] or (
                " / ".join(f"{x:.2f}x" for x in v.values()) + f" at {' / '.join(v)} streams"
            )
            out.append(f"| {h['name']} | {text} |")
        out.append("")
    out += ["| measured | result | baseline in the same run |", "|---|---|---|"]
    concs = (1, 16, 64)

    def add(measured: str, result_text: str, baseline: str = "") -> None:
        out.append(f"| {measured} | {result_text} | {baseline} |")

    for op, label in ((GET, "GetService"), (PICK, "PickEndpoint")):
        s = rows.series(op, concs)
        if s:
            base = "; ".join(
                x for x in (_ratios(s, NOOP, "no-op RPC"), _ratios(s, ETCD, "etcd Range")) if x
            )
            if s[0].get("driver", "python") == "python":  # an older file
                base += " (the Python client drives both: its own limit caps these)"
            add(
                f"{label}, 1 / 16 / 64 {_unit(s)} ({_driver(s)})",
                " / ".join(_n(r["calls_per_s"]) for r in s) + " calls/s",
                base,
            )
    floors: tuple[tuple[str | tuple[str, ...], str], ...] = (
        (NOOP, "health.Check, the no-op RPC"),
        (ETCD, "etcd KV/Range, same keys"),
    )
    for floor, label in floors:
        s = rows.series(floor, concs)
        if s:
            add(
                f"{label}, 1 / 16 / 64 {_unit(s)} ({_driver(s)})",
                " / ".join(_n(r["calls_per_s"]) for r in s) + " calls/s",
            )
    offered = [rows.get(op, "1000/s") for op in (GET, PICK, NOOP, ETCD)]
    if all(offered[:2]):
        g, p = offered[0], offered[1]
        assert g and p
        base = ", ".join(
            f"{label} p50 {_ms(r['p50_ms'])} ms, p99 {_ms(r['p99_ms'])} ms"
            for r, label in zip(offered[2:], ("no-op RPC", "etcd Range"), strict=True)
            if r
        )
        add(
            f"GetService / PickEndpoint at 1,000 calls/s offered ({_driver([g])})",
            f"p50 {_ms(g['p50_ms'])} / {_ms(p['p50_ms'])} ms, "
            f"p99 {_ms(g['p99_ms'])} / {_ms(p['p99_ms'])} ms",
            base,
        )
    s = rows.series(GET_PY, concs)
    if s:
        add(
            "GetService from a Python caller (grpc.aio), 1 / 16 / 64 callers",
            " / ".join(_n(r["calls_per_s"]) for r in s) + " calls/s",
        )
    local = (
        (LOCAL_GET, "`discover()`", REMOTE_GET),
        (LOCAL_PICK, "`pick()`", REMOTE_PICK),
    )
    for op, call, remote in local:
        s = rows.series(op, concs)
        if s:
            base = "; ".join(
                x
                for x in (
                    _ratios(s, remote, "the same call as an RPC"),
                    _ratios(s, GET_PY, "GetService (grpc.aio)"),
                    _ratios(s, ETCD_PY, "etcd read (Python)"),
                )
                if x
            )
            add(
                f"{call} from hub_client's local view, 1 / 16 / 64 callers (one process)",
                " / ".join(_n(r["calls_per_s"]) for r in s) + " lookups/s",
                base,
            )
    change = next((r for r in rows.propagation if r["op"] == CHANGE_TO_VIEW), None)
    if change:
        add(
            "registry change -> hub_client's local view (from the write's start)",
            f"p50 {_ms(change['p50_ms'])} ms, p99 {_ms(change['p99_ms'])} ms",
        )
    s = rows.series(GET_2PROC, (16, 64))
    if s:
        add(
            f"`--workers 2` (8 connections, 16 / 64 {_unit(s)}, {_driver(s)})",
            " / ".join(_n(r["calls_per_s"]) for r in s) + " calls/s",
            _ratios(s, GET_1PROC, "one process"),
        )
    reg, ka = rows.get("Register", 16), rows.get("KeepAlive", 16)
    if reg and ka:
        add(
            "Register / KeepAlive, 16 callers (Python client)",
            f"{_n(reg['calls_per_s'])}/s / {_n(ka['calls_per_s'])}/s",
            "raw etcd " + " / ".join(f"{v:.2f}x" for r in (reg, ka) for v in r["ratios"].values()),
        )
    alloc = rows.get("Allocate (1 tenant)", 50)
    if alloc:
        lost = rows.facts.get("quota: updates lost (hub + etcd CAS)")
        cas = rows.get("etcd Txn CAS increment (direct)", 50)
        add(
            "Allocate, 50 allocators on one tenant",
            f"{_n(alloc['calls_per_s'])}/s"
            + (", nothing lost" if lost and not lost["value"] else ""),
            f"raw etcd CAS increment {_n(cas['calls_per_s'])}/s" if cas else "",
        )
    _propagation(rows, add)
    probes = result.get("probes")
    if probes:
        add(
            f"probes, {probes['instances']:,} TCP checks every {probes['interval_s']:g} s",
            f"longest gap {probes['longest_unprobed_s']:.1f} s, "
            f"{probes['instances_late']} instances late",
            "",
        )
    rss = [
        rows.facts.get(n)
        for n in (
            "hub RSS, empty",
            "hub RSS, 10,000 instances",
            "hub RSS, 10,000 inst. + 1,000 watchers",
            "hub RSS, 10,000 inst. + 5,000 watchers",
        )
    ]
    if all(rss[:2]):
        add(
            "hub RSS empty / 10,000 instances" + " / + 1,000 / + 5,000 watchers" * all(rss),
            " / ".join(f"{f['value']:.0f}" for f in rss if f) + " MiB",
        )
    cold, empty = (
        rows.facts.get(n)
        for n in ("hub cold start, 10,000 instances", "hub cold start, empty etcd")
    )
    if cold and empty:
        add(
            "cold start with 10,000 instances in etcd",
            f"{cold['value']:.1f} s",
            f"{empty['value']:.1f} s on an empty etcd",
        )
    return "\n".join(out)


def _propagation(rows: Rows, add: Callable[[str, str, str], None]) -> None:
    def p99(op: str) -> Row | None:
        return next((r for r in rows.propagation if r["op"] == op), None)

    def base_p99(row: Row) -> str:
        base = next(
            (
                b
                for b in rows.propagation
                if b["op"] == row.get("baseline") and b["cell"] == row["cell"]
            ),
            None,
        )
        return f"{_ms(base['p99_ms'])} ms" if base else "?"

    for label, ops in (
        (
            "registry change → last of 1,000 / 5,000 watch streams",
            ("Register -> last of 1,000 Watch streams", "Register -> last of 5,000 Watch streams"),
        ),
        (
            "health record → last of 1,000 / 5,000 WatchHealth",
            ("written -> last of 1,000 WatchHealth", "written -> last of 5,000 WatchHealth"),
        ),
        (
            "config write → last of 1,000 WatchConfig (1 / 1,000 tenants)",
            (
                "SetConfigLayer -> last of 1,000 WatchConfig (1 tenant)",
                "SetConfigLayer -> last of 1,000 WatchConfig (1,000 tenants)",
            ),
        ),
    ):
        found = [p99(op) for op in ops]
        if all(found):
            add(
                label,
                "p99 " + " / ".join(f"{_ms(r['p99_ms'])} ms" for r in found if r),
                "direct etcd watch p99 " + " / ".join(base_p99(r) for r in found if r),
            )
    # bench.xds: hub state changes until the last ADS stream has the new
    # ClusterLoadAssignment, against their 1 s target (issue 16).
    pushed = [p99(XDS_STATE_OP.format(change=c)) for c in XDS_CHANGES]
    if all(pushed):
        met = all(r and r["p99_ms"] < 1000 and not r["missed"] for r in pushed)
        watch = [p99(op) for op in XDS_WATCH_OPS]
        add(
            "hub state change → EDS at the last of 1,000 ADS streams "
            "(UNHEALTHY / drain / circuit open / weight)",
            "p99 " + " / ".join(f"{_ms(r['p99_ms'])} ms" for r in pushed if r)
            + f" (target < 1 s: {'met' if met else 'MISSED'})",
            "WatchHealth / Watch streams p99 "
            + " / ".join(f"{_ms(r['p99_ms'])} ms" if r else "?" for r in watch),
        )  # fmt: skip


def cluster(result: dict[str, Any], name: str) -> str:
    rows = Rows(result)
    out = [
        f"From `bench/results/{name}` (Python client):",
        "",
        "| measured (16 callers) | result | baseline in the same run |",
        "|---|---|---|",
    ]
    for op, label in (
        ("Register, 3-member etcd", "Register, 3-member cluster"),
        ("GetService, 3-member etcd, 1 hub", "GetService, one hub on the cluster"),
        ("GetService, 3-member etcd, 2 hubs", "GetService, spread over two hubs"),
        ("Register, 1 of 3 members down", "Register with one member killed"),
        ("GetService, 1 of 3 members down", "GetService with one member killed"),
    ):
        r = rows.get(op, 16)
        if r:
            base = ", ".join(f"{v:.2f}x {k}" for k, v in r["ratios"].items())
            errors = ", no errors" if not r["errors"] else f", {r['errors']} errors"
            out.append(f"| {label} | {_n(r['calls_per_s'])}/s{errors} | {base} |")
    if len(out) == 4:
        out.append("| (not in this run) | | |")
    return "\n".join(out)


def _curve_value(y: float | None) -> str:
    if y is None:
        return "-"
    return f"{y:,.0f}" if abs(y) >= 100 else f"{y:.3g}"


def curves(result: dict[str, Any], path: str) -> str:
    """The scale curves of one results file: each curve's points, its baseline's,
    and k, the exponent of cost growth between its largest two points."""
    found = result.get("curves")
    if not found:
        return f"`{path}` has no scale curves (it predates them)."
    out = [
        f"From `{path}`; k: cost ~ size^k between the largest two points (0 flat, 1 linear; "
        "for a throughput, of its inverse), **flagged** when worse than linear:",
        "",
        "| curve | sizes | result | baseline in the same run | k |",
        "|---|---|---|---|---|",
    ]
    for c in found:
        sizes = " / ".join(f"{x:,.0f}" for x, _ in c["points"]) + f" {c['x']}"
        values = " / ".join(_curve_value(y) for _, y in c["points"]) + f" {c['unit']}"
        base = c.get("baseline")
        base_text = (
            f"{base['name']}: " + " / ".join(_curve_value(y) for _, y in base["points"])
            if base and base["points"]
            else ""
        )
        k = c.get("cost_exponent")
        k_text = (
            "" if k is None else f"{k:+.2f}" + (" **worse than linear**" * c["worse_than_linear"])
        )
        out.append(f"| {c['name']} | {sizes} | {values} | {base_text} | {k_text} |")
    return "\n".join(out)


def scale(result: dict[str, Any], name: str) -> str:
    return curves(result, f"bench/results/{name}")


def million(scale_result: tuple[dict[str, Any], str] | None) -> str:
    if scale_result is None:
        return "No `make bench-scale` results are committed yet."
    result, name = scale_result
    env = result["environment"]
    m = env.get("machine", {})
    head = (
        f"{env['cores']} cores, {m.get('memory_mib', 0) / 1024:.0f} GiB; load average "
        f"{m.get('loadavg_before', ['?'])[0]} before, {m.get('loadavg_after', ['?'])[0]} after; "
        f"{env.get('wall_seconds', 0) / 60:.0f} minutes."
    )
    return head + " " + curves(result, f"bench/results/scale/{name}")


def targets(
    result: dict[str, Any], name: str, scale_result: tuple[dict[str, Any], str] | None
) -> str:
    """Every target the bench judged, met or missed, from both results files."""
    out = ["| target | measured | |", "|---|---|---|"]
    sources = [(result, f"bench/results/{name}")]
    if scale_result is not None:
        sources.append((scale_result[0], f"bench/results/scale/{scale_result[1]}"))
    for res, path in sources:
        for t in res.get("targets", []):
            verdict = "met" if t["met"] else "**missed**"
            source = path.rsplit("/", 1)[1]
            out.append(f"| {t['target']} | {t['measured']} (`{source}`) | {verdict} |")
    return "\n".join(out)


SECTIONS = {"discovery": discovery, "cluster": cluster, "scale": scale}


def render(
    result: dict[str, Any],
    name: str,
    scale_result: tuple[dict[str, Any], str] | None = None,
) -> dict[str, str]:
    """Every section from a `make bench` results file; the million-instance
    curve from a `make bench-scale` one (``scale_result``)."""
    out = {section: f(result, name) for section, f in SECTIONS.items()}
    out["scale-million"] = million(scale_result)
    out["targets"] = targets(result, name, scale_result)
    return out


def rewrite(readme: str, sections: dict[str, str]) -> str:
    """The README with each marked section's body replaced."""
    for section, body in sections.items():
        pattern = re.compile(
            rf"(<!-- bench:{section} -->\n).*?(<!-- /bench:{section} -->)", re.DOTALL
        )
        m = pattern.search(readme)
        if not m:
            raise ValueError(f"README has no <!-- bench:{section} --> markers")
        readme = readme[: m.start()] + m.group(1) + body + "\n" + m.group(2) + readme[m.end() :]
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    parser.add_argument("--results", type=Path, help="results file (default: the newest)")
    args = parser.parse_args(argv)
    path = args.results or newest()
    text = README.read_text()
    new = rewrite(text, render(json.loads(path.read_text()), path.name, newest_scale()))
    if args.check:
        if new != text:
            print(f"README.md's performance tables differ from {path.name}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new)
        print(f"README.md: performance tables from {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
