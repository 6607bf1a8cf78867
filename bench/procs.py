"""The processes a benchmark run starts: hubs as separate `central-hub serve`
processes (so the load generator does not share their event loop or GIL)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_server.embedded_etcd import free_port

# Reconnect quickly while a hub is starting, so start-up is timed to ~10 ms.
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    # Fields after the parenthesised command name; utime and stime are the 14th
    # and 15th fields of the whole line.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HubProcess:
    """`central-hub serve` against an existing etcd, on a free loopback port."""

    def __init__(
        self,
        name: str,
        etcd_endpoint: str,
        workdir: Path,
        extra: tuple[str, ...] = (),
        *,
        metrics: bool = False,
    ) -> None:
        self.name = name
        self.extra = extra
        # With metrics, a Prometheus endpoint (the RPC outcome counters bench.h2load reads).
        self.metrics_address = f"127.0.0.1:{free_port()}" if metrics else ""
        if metrics:
            self.extra += ("--metrics-listen", self.metrics_address)
        self.etcd_endpoint = etcd_endpoint
        self.workdir = workdir
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> float:
        """Spawns the hub and waits for grpc.health.v1 SERVING; returns the seconds
        from spawn to SERVING (the cold start)."""
        t0 = time.perf_counter()
        self._spawn()
        await self._wait_serving(timeout)
        return time.perf_counter() - t0

    def _spawn(self) -> None:
        args = [
            str(Path(sys.executable).parent / "central-hub"),
            "serve",
            "--listen", self.address,
            "--etcd-endpoints", self.etcd_endpoint,
            "--hub-id", self.name,
            "--data-dir", str(self.workdir / self.name),
            *self.extra,
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:  # the hub dies with the benchmark, however it ends
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        with open(self.workdir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    async def _wait_serving(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        request = health_pb2.HealthCheckRequest()
        async with grpc.aio.insecure_channel(self.address, options=_FAST_RECONNECT) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    # The run's directory is removed at its end: the log's tail
                    # goes with the error.
                    logfile = self.workdir / f"{self.name}.log"
                    tail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else ""
                    raise RuntimeError(
                        f"hub {self.name} exited with {self.proc.returncode}; its log ends:\n{tail}"
                    )
                try:
                    resp = await stub.Check(request, timeout=0.5)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.005)
        raise TimeoutError(f"hub {self.name} not SERVING after {timeout}s")

    def rss_mb(self) -> float:
        """Resident set size of the hub process (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
