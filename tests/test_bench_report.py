"""The benchmark's pure parts: h2load output and log parsing, server counters,
the headline ratios, and the README's performance tables, which must be what
scripts/bench_readme.py renders from the newest committed results file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from bench import h2load, report

ROOT = Path(__file__).resolve().parent.parent


def _bench_readme():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "scripts/bench_readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_readme"] = module
    spec.loader.exec_module(module)
    return module


bench_readme = _bench_readme()

# Captured from h2load 1.52 against a hub's GetService (-D 2 -c 4 -m 4).
H2LOAD_OUT = """\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 15123.50 req/s, 45.08MB/s
requests: 30247 total, 30263 started, 30247 done, 30247 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 30247 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 90.16MB (94541125) total, 59.12KB (60542) headers (space savings 94.73%), 89.02MB (93342242) data
                     min         max         mean         sd        +/- sd
time for request:       35us     20.16ms      1.00ms      1.25ms    91.39%
time for connect:       53us        82us        70us        12us    75.00%
time to 1st byte:     1.69ms      1.72ms      1.71ms        12us    75.00%
req/s           :    3683.08     3920.61     3780.44      100.21    75.00%
"""  # noqa: E501

H2LOAD_LOG = """\
1796650974927102\t200\t4204
1796650974927331\t200\t4087
1796650974927616\t200\t4197
1796650974928000\t-1\t9000
1796650974929000\t200\t1000
"""

ETCD_METRICS = """\
# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="DeleteRange",grpc_service="etcdserverpb.KV",grpc_type="unary"} 15
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 56610
grpc_server_handled_total{grpc_code="Unknown",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 5
grpc_server_handled_total{grpc_code="Canceled",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="other.KV",grpc_type="unary"} 99
grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 56617
"""  # noqa: E501

HUB_METRICS = """\
# TYPE hub_operation_duration_milliseconds histogram
hub_operation_duration_milliseconds_bucket{le="1.0",operation="/aitrading.hub.v1.RegistryService/GetService",outcome="ok",service="central-hub"} 7000.0
hub_operation_duration_milliseconds_count{operation="/aitrading.hub.v1.RegistryService/GetService",otel_scope_name="hub_client.performance",outcome="ok",service="central-hub"} 7285.0
hub_operation_duration_milliseconds_count{error_type="NOT_FOUND",operation="/aitrading.hub.v1.RegistryService/GetService",outcome="error",service="central-hub"} 3.0
hub_operation_duration_milliseconds_count{operation="/aitrading.hub.v1.RegistryService/Register",outcome="ok",service="central-hub"} 40.0
"""  # noqa: E501


def test_grpc_body_is_length_prefixed() -> None:
    body = h2load.grpc_body(health_pb2.HealthCheckRequest(service="x"))
    assert body == b"\0\0\0\0\3" + b"\x0a\x01x"


def test_parse_summary() -> None:
    s = h2load.parse_summary(H2LOAD_OUT)
    assert (s.seconds, s.started, s.done, s.succeeded) == (2.0, 30263, 30247, 30247)
    assert (s.failed, s.errored, s.timeout, s.data_bytes) == (0, 0, 0, 93342242)
    assert h2load.parse_summary(H2LOAD_OUT.replace("2.00s,", "950.12ms,")).seconds == 0.95012
    with pytest.raises(ValueError):
        h2load.parse_summary("connect failed\n")


def test_parse_log_and_summarize() -> None:
    rows = h2load.parse_log(H2LOAD_LOG + "garbage\n")
    assert rows[0] == (1796650974927102, 200, 4204) and len(rows) == 5
    summary = h2load.Summary(2.0, 5, 5, 4, 0, 0, 0, 0)
    out = h2load.summarize(summary, rows, grpc_errors=1)
    # 4 HTTP 200 streams, one of which the server counted as a gRPC error; the
    # failed stream (-1) is an error too; latencies are of the 200 streams.
    assert out["calls"] == 3 and out["errors"] == 2 and out["calls_per_s"] == 1.5
    assert (out["p50_ms"], out["max_ms"]) == (4.087, 4.204)
    assert "start_lag_p99_ms" not in out
    # Open loop: the 5th call started 1.898 ms after the first, due at 4 ms (1,000/s).
    lagged = h2load.summarize(summary, rows, grpc_errors=0, rate=1000)
    assert lagged["start_lag_p99_ms"] == 0.0
    late = h2load.summarize(summary, rows, grpc_errors=0, rate=10_000)
    assert late["start_lag_p99_ms"] == pytest.approx(1.898 - 0.4, abs=1e-3)


def test_server_counters() -> None:
    etcd = h2load.parse_prometheus(ETCD_METRICS)
    assert h2load.etcd_outcomes(etcd, "/etcdserverpb.KV/Range") == (56610, 7)
    hub = h2load.parse_prometheus(HUB_METRICS)
    assert h2load.hub_outcomes(hub, "/aitrading.hub.v1.RegistryService/GetService") == (7285, 3)
    assert h2load.hub_outcomes(hub, "/aitrading.hub.v1.RegistryService/Nope") == (0, 0)


def test_bodyless_counts_answers_without_a_message() -> None:
    ok = h2load.Summary(1.0, 100, 100, 100, 0, 0, 0, data_bytes=100 * 7)
    assert h2load.bodyless(ok, 7) == 0
    some = h2load.Summary(1.0, 100, 100, 100, 0, 0, 0, data_bytes=97 * 7)
    assert h2load.bodyless(some, 7) == 3


def _row(op: str, c: int | str, rate: float, driver: str = "h2load") -> dict:
    return {"op": op, "concurrency": c, "calls_per_s": rate, "driver": driver}


def test_headline_ratios() -> None:
    rows = [
        _row(report.GET, 1, 1000.0),
        _row(report.NOOP, 1, 2000.0),
        _row(report.ETCD_READ, 1, 4000.0),
        _row(report.GET, 64, 1500.0),
        _row(report.NOOP, 64, 2000.0),
        _row(report.GET, "1000/s", 1000.0),  # open loop: no throughput ratio
        _row(report.GET_1PROC, 16, 2000.0),
        _row(report.GET_2PROC, 16, 3000.0),
        _row(report.GET_PY, 1, 900.0, "python"),
    ]
    by_name = {h["numerator"] + "/" + h["denominator"]: h for h in report.headline(rows)}
    noop = by_name[f"{report.GET}/{report.NOOP}"]
    assert noop["by_concurrency"] == {"1": 0.5, "64": 0.75} and not noop["note"]
    assert by_name[f"{report.GET}/{report.ETCD_READ}"]["by_concurrency"] == {"1": 0.25}
    assert by_name[f"{report.GET_2PROC}/{report.GET_1PROC}"]["by_concurrency"] == {"16": 1.5}
    lookup = by_name[f"{report.LOOKUP}/{report.GET_PY}"]
    assert lookup["by_concurrency"] == {} and lookup["note"] == "n/a (not measured in this run)"
    # bench.local_view's rows fill it in.
    rows.append(_row(report.LOOKUP, 1, 90_000.0, "python"))
    lookup = next(h for h in report.headline(rows) if h["numerator"] == report.LOOKUP)
    assert lookup["by_concurrency"] == {"1": 100.0} and not lookup["note"]
    lines = report.headline_lines(report.headline(rows))
    assert any("0.50x / 0.75x" in line and "c=1 / 64" in line for line in lines)
    # A Python-driven row never stands in for an h2load one.
    python_only = [_row(report.GET, 1, 1000.0, "python"), _row(report.NOOP, 1, 2000.0, "python")]
    assert report.headline(python_only)[0]["note"] == "n/a (not measured in this run)"


def test_readme_rewrite_between_markers() -> None:
    text = "a\n<!-- bench:discovery -->\nold\n<!-- /bench:discovery -->\nb\n"
    text += "<!-- bench:cluster -->\n<!-- /bench:cluster -->\n"
    new = bench_readme.rewrite(text, {"discovery": "new | 1", "cluster": "c"})
    assert new == (
        "a\n<!-- bench:discovery -->\nnew | 1\n<!-- /bench:discovery -->\nb\n"
        "<!-- bench:cluster -->\nc\n<!-- /bench:cluster -->\n"
    )
    with pytest.raises(ValueError):
        bench_readme.rewrite("no markers", {"discovery": "x"})


def test_every_results_file_renders() -> None:
    """Older files (Python-driven discovery rows, no headline) render too."""
    for path in sorted((ROOT / "bench/results").glob("*.json")):
        sections = bench_readme.render(json.loads(path.read_text()), path.name)
        assert path.name in sections["discovery"]
        result = json.loads(path.read_text())
        assert report.render(result)


def test_readme_tables_are_the_newest_committed_results() -> None:
    """The README's performance tables are generated, never edited by hand: run
    `python scripts/bench_readme.py` after committing a results file."""
    path = bench_readme.newest(committed=True)
    expected = bench_readme.rewrite(
        (ROOT / "README.md").read_text(),
        bench_readme.render(
            json.loads(path.read_text()), path.name, bench_readme.newest_scale(committed=True)
        ),
    )
    assert (ROOT / "README.md").read_text() == expected


def test_growth_exponent_and_flag() -> None:
    from bench import scale

    assert scale.exponent([[10_000, 2.0], [100_000, 2.0]]) == 0.0
    assert scale.exponent([[1_000, 5.0], [10_000, 50.0], [100_000, 500.0]]) == 1.0
    assert scale.exponent([[10_000, 1.0]]) is None
    assert scale.exponent([[10_000, 0.0], [100_000, 1.0]]) is None
    # Between the largest two points only: quadratic at the end is flagged.
    listing = scale.curve("ListServices", "instances", "s", [[1e3, 1.0], [1e4, 2.0], [1e5, 200.0]])
    assert listing["cost_exponent"] == 2.0 and listing["worse_than_linear"]
    # A throughput that halves as the size grows tenfold: its cost grows by k = 0.3.
    register = scale.curve(
        "Register", "instances", "calls/s", [[1e4, 1000.0], [1e5, 500.0]], higher_is_better=True
    )
    assert register["exponent"] == -0.3 and register["cost_exponent"] == 0.3
    assert not register["worse_than_linear"]
    text = "\n".join(scale.render([listing, register]))
    assert "k=+2.00  WORSE THAN LINEAR" in text and "k=+0.30" in text
    targets = report.targets([], [], 1000, curves=[listing, register])
    assert [t["met"] for t in targets] == [False]  # the flagged curve


def test_scale_sections_render() -> None:
    from bench import scale

    rss = scale.curve(
        "hub RSS", "instances", "MiB", [[10_000, 100.0], [1_000_000, 1500.0]],
        baseline=("etcd", [[10_000, 5.0], [1_000_000, 400.0]]),
    )  # fmt: skip
    result = {
        "environment": {"cores": 2, "machine": {"memory_mib": 24 * 1024,
                        "loadavg_before": [0.5], "loadavg_after": [1.0]}, "wall_seconds": 1500},
        "curves": [rss],
    }  # fmt: skip
    text = bench_readme.million((result, "20270101T000000Z.json"))
    assert "bench/results/scale/20270101T000000Z.json" in text and "25 minutes" in text
    assert (
        "| hub RSS | 10,000 / 1,000,000 instances | 100 / 1,500 MiB | etcd: 5 / 400 | +0.59 |"
        in text
    )
    assert bench_readme.million(None) == "No `make bench-scale` results are committed yet."
    assert "predates" in bench_readme.scale({}, "x.json")
    targets = report.targets([], [], 1000, curves=[rss])
    assert targets[0]["target"].startswith("hub RSS < 1024 MiB") and not targets[0]["met"]


def test_tail_at_the_offered_rate_is_judged_against_the_no_op() -> None:
    def offered(op: str, p99: float) -> dict:
        return {**_row(op, "1000/s", 1000.0), "p99_ms": p99, "errors": 0, "ratios": {}}

    rows = [offered(report.NOOP, 1.0), offered(report.GET, 1.2), offered(report.PICK, 1.3)]
    judged = {t["target"]: t for t in report.targets(rows, [], 1000) if "x health" in t["target"]}
    get, pick = (judged[f"{op} p99 <= 1.2 x {report.NOOP} p99 at 1,000 calls/s"]
                 for op in (report.GET, report.PICK))  # fmt: skip
    assert get["met"] and get["measured"].startswith("1.20 x")
    assert not pick["met"] and pick["measured"].startswith("1.30 x")


def test_xds_cells_are_judged_by_their_own_target() -> None:
    # bench.xds's cells hold as many Watch as ADS streams: the 1,000-stream
    # fan-out target (100 ms) is not theirs; their rows carry xDS's 1 s.
    def row(op: str, p99: float, **extra: float) -> dict:
        return {"op": op, "receivers": 1000, "p99_ms": p99, "changes": 20, "missed": 0, **extra}

    propagation = [
        row("Register -> last of 1,000 Watch streams", 42.0),
        row("Register -> last of 1,000 Watch streams (beside ADS)", 210.0),
        row("Register -> EDS ACK from last of 1,000 ADS streams", 201.0, target_ms=1000.0),
    ]
    judged = {t["target"]: t["met"] for t in report.targets([], [], 1000, propagation)}
    assert judged == {
        "fan-out p99 < 100 ms: Register -> last of 1,000 Watch streams": True,
        "p99 < 1000 ms: Register -> EDS ACK from last of 1,000 ADS streams": True,
    }


def test_readme_lists_every_target_of_both_runs() -> None:
    result = {"targets": [{"target": "a < 1", "measured": "0.5", "met": True}]}
    scale = {"targets": [{"target": "b < 1", "measured": "2", "met": False}]}
    table = bench_readme.targets(result, "x.json", (scale, "y.json"))
    assert "| a < 1 | 0.5 (`x.json`) | met |" in table
    assert "| b < 1 | 2 (`y.json`) | **missed** |" in table
