"""Unary gRPC load from h2load (nghttp2's C HTTP/2 load generator), so that the
load generator is not the bottleneck: a Python grpc.aio client tops out near
the hub's own rate, which capped every ratio it was the denominator of.

h2load sends raw gRPC frames: POST with `content-type: application/grpc` and
`te: trailers`, the body one length-prefixed message prepared in advance (one
body per run: each cell asks for one service, see bench.run). It sees HTTP
statuses only; a gRPC error is HTTP 200 with a non-zero grpc-status trailer. So
errors are counted by the server: the hub's RPC outcome metric or etcd's
`grpc_server_handled_total`, read before and after each cell; where there is
no counter (grpc.health.v1, which the hub registers without its call wrapper;
`--workers`, which serves no /metrics), by responses that came without a body
(an error is a trailers-only response: no DATA bytes).

Latency percentiles come from h2load's per-request log (start µs, HTTP status,
µs to end of response).
"""

from __future__ import annotations

import asyncio
import math
import re
import resource
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from bench.load import percentile

H2LOAD = "h2load"
HEADERS = ("content-type: application/grpc", "te: trailers")
# h2load's --rps timer fires at most every 10 ms (nghttp2's rps_cb: repeat =
# max(0.01, 1/rps)): a client asked for more than 100/s sends bursts. So the
# offered rate is spread over clients of at most 100/s each, their connections
# opened 1/rate apart (-r 1 --rate-period), which staggers their timers into
# one evenly spaced stream of calls.
MAX_RPS_PER_CLIENT = 100

# The hub's per-RPC histogram (hub_server.observability.telemetry via PerformanceTracker),
# as the Prometheus exporter names it; etcd's go-grpc-prometheus counter.
HUB_RPC_COUNT = "hub_operation_duration_milliseconds_count"
ETCD_HANDLED = "grpc_server_handled_total"

Sample = tuple[str, dict[str, str], float]


def available() -> bool:
    return shutil.which(H2LOAD) is not None


def grpc_body(message: Message) -> bytes:
    """One gRPC message as it goes on the wire: uncompressed flag, 4-byte
    big-endian length, the serialized message."""
    data = message.SerializeToString()
    return b"\0" + len(data).to_bytes(4, "big") + data


# ---- parsing (pure, unit-tested) -------------------------------------------


@dataclass
class Summary:
    """h2load's own totals (stdout)."""

    seconds: float  # "finished in": the main duration (-D), or start to end (-n)
    started: int
    done: int
    succeeded: int  # streams that completed (HTTP 2xx); says nothing of grpc-status
    failed: int
    errored: int
    timeout: int
    data_bytes: int  # DATA frame payload received, all requests


def parse_summary(text: str) -> Summary:
    finished = re.search(r"^finished in ([\d.]+)(m?s)", text, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    traffic = re.search(r"^traffic: .*?([\d]+)\) data", text, re.M)
    if not (finished and counts and traffic):
        raise ValueError(f"not an h2load summary:\n{text[-2000:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    _, started, done, ok, failed, errored, timeout = map(int, counts.groups())
    return Summary(seconds, started, done, ok, failed, errored, timeout, int(traffic.group(1)))


def parse_log(text: str) -> list[tuple[int, int, int]]:
    """--log-file rows: (start µs since the epoch, HTTP status or -1, µs to the
    end of the response)."""
    rows = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return rows


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not (m := _SAMPLE.match(line)):
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def outcomes(
    samples: list[Sample], name: str, match: dict[str, str], ok: tuple[str, str]
) -> tuple[int, int]:
    """(ok, errors) summed over the samples of ``name`` whose labels include
    ``match``; a sample is ok when its label ``ok[0]`` equals ``ok[1]``."""
    good = bad = 0.0
    for n, labels, value in samples:
        if n == name and all(labels.get(k) == v for k, v in match.items()):
            if labels.get(ok[0]) == ok[1]:
                good += value
            else:
                bad += value
    return round(good), round(bad)


def hub_outcomes(samples: list[Sample], method: str) -> tuple[int, int]:
    """The hub's count of finished calls of ``method`` (/pkg.Service/Method)."""
    return outcomes(samples, HUB_RPC_COUNT, {"operation": method}, ("outcome", "ok"))


def etcd_outcomes(samples: list[Sample], method: str) -> tuple[int, int]:
    service, _, name = method.strip("/").partition("/")
    match = {"grpc_service": service, "grpc_method": name}
    return outcomes(samples, ETCD_HANDLED, match, ("grpc_code", "OK"))


def summarize(
    summary: Summary,
    log: list[tuple[int, int, int]],
    grpc_errors: int,
    *,
    rate: float = 0.0,
) -> dict[str, Any]:
    """A row in bench's summary shape (bench.load.Stats.summary). Calls are the
    completed HTTP 200 streams less the server's gRPC errors; errors are those
    plus streams h2load saw fail. Latencies are of every HTTP 200 stream (the
    log does not say which of them carried an error status). With ``rate``
    (open loop), start_lag_p99_ms: how late the n-th call started against an
    even schedule from the first."""
    ok = sorted(d / 1e6 for _, status, d in log if status == 200)
    transport = sum(1 for _, status, _ in log if status != 200)
    calls = max(0, len(ok) - grpc_errors)
    out: dict[str, Any] = {
        "calls": calls,
        "errors": grpc_errors + transport + summary.failed + summary.timeout,
        "seconds": round(summary.seconds, 3),
        "calls_per_s": round(calls / summary.seconds, 1) if summary.seconds else 0.0,
        "p50_ms": round(percentile(ok, 50) * 1e3, 3),
        "p99_ms": round(percentile(ok, 99) * 1e3, 3),
        "max_ms": round((ok[-1] if ok else 0.0) * 1e3, 3),
    }
    if rate and log:
        starts = sorted(s for s, _, _ in log)
        lags = sorted(max(0.0, (s - starts[0]) / 1e6 - k / rate) for k, s in enumerate(starts))
        out["start_lag_p99_ms"] = round(percentile(lags, 99) * 1e3, 3)
    return out


def bodyless(summary: Summary, body_size: int) -> int:
    """Streams that completed without a response message, from the DATA bytes
    received and the size of one response (5-byte prefix + message): the gRPC
    errors of a call that has no server counter, when every answer has the
    same size."""
    return max(0, summary.done - round(summary.data_bytes / body_size))


# ---- running ---------------------------------------------------------------


@dataclass
class Target:
    """One gRPC method to load and how its errors are counted."""

    address: str  # host:port
    method: str  # /pkg.Service/Method
    body: bytes  # grpc_body(request)
    # The server's (ok, errors) so far for this method, or None: then errors are
    # counted by bodyless responses of ``response_size`` bytes.
    counter: Callable[[], tuple[int, int]] | None = None
    response_size: int = 0
    error_source: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.method}"


def metrics_reader(
    url: str, parse: Callable[[list[Sample], str], tuple[int, int]], method: str
) -> Callable[[], tuple[int, int]]:
    """A counter read from a Prometheus endpoint (blocking: milliseconds)."""

    def read() -> tuple[int, int]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return parse(parse_prometheus(resp.read().decode()), method)

    return read


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children: h2load runs are the
    only ones that end during a cell."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def _h2load(args: list[str], timeout: float) -> str:
    setpriv = shutil.which("setpriv")
    cmd = [H2LOAD, *args]
    if setpriv:  # h2load dies with the benchmark, however it ends
        cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"h2load exited with {proc.returncode}:\n{out.decode()[-2000:]}")
    return out.decode()


def _common(target: Target, body: Path) -> list[str]:
    return [a for h in HEADERS for a in ("-H", h)] + ["-d", str(body)]


async def run(
    target: Target,
    *,
    concurrency: int = 0,
    connections: int = 1,
    duration: float,
    rate: float = 0.0,
    log: bool = True,
) -> tuple[Summary, list[tuple[int, int, int]], int]:
    """One h2load run: closed loop (``concurrency`` streams over ``connections``
    connections, back to back, for ``duration`` s) or open loop (``rate`` calls/s
    for ``duration`` s). Returns h2load's summary, its per-request log and the
    gRPC errors counted for the run."""
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body, log_file = Path(tmp) / "body.bin", Path(tmp) / "requests.log"
        body.write_bytes(target.body)
        args = _common(target, body)
        if rate:
            clients = math.ceil(rate / MAX_RPS_PER_CLIENT)
            args += [
                "-n", str(round(rate * duration)),
                "-c", str(clients),
                "--rps", f"{rate / clients:g}",
                # Connections (hence the clients' timers) 1/rate apart; h2load takes
                # whole milliseconds here.
                "-r", "1", "--rate-period", f"{max(1, round(1000 / rate))}ms",
                # Streams enough that a slow answer never holds the next call back.
                "-m", "64",
            ]  # fmt: skip
        else:
            per = math.ceil(concurrency / connections)
            args += ["-c", str(connections), "-m", str(per), "-D", f"{round(duration * 1000)}ms"]
        if log:
            args += ["--log-file", str(log_file)]
        before = target.counter() if target.counter else None
        out = await _h2load([*args, target.url], timeout=3 * duration + 30)
        summary = parse_summary(out)
        rows = parse_log(log_file.read_text()) if log else []
    if target.counter and before is not None:
        await asyncio.sleep(0.05)  # streams h2load reset at the end are counted
        after = target.counter()
        # h2load resets the streams in flight when -D ends; the server may count
        # them as cancelled, which is not an error of the server's.
        errors = max(0, after[1] - before[1] - (summary.started - summary.done))
    else:
        errors = bodyless(summary, target.response_size) if target.response_size else 0
    return summary, rows, errors
