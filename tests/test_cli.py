"""`central-hub serve` as a user runs it: embedded etcd, restarts keep state,
signals stop it cleanly, a killed hub leaves no etcd behind; grpcurl works
through reflection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1 import cluster_pb2, cluster_pb2_grpc, registry_pb2, registry_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_server.embedded_etcd import free_port
from tests.support.waiting import eventually

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def _etcd_pids(data_dir: Path) -> list[int]:
    """Live etcd processes whose command line names this data dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if (
            state != "Z"
            and any(b"etcd" in a for a in cmdline[:4])
            and str(data_dir).encode() in b" ".join(cmdline)
        ):
            pids.append(int(entry.name))
    return pids


class Serve:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *extra: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(BIN / "central-hub"), "serve", "--listen", self.address,
            "--data-dir", str(self.data_dir), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await eventually(self._serving, timeout=30)

    async def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            out = await self.proc.stdout.read() if self.proc.stdout else b""
            raise AssertionError(f"central-hub exited: {out.decode(errors='replace')}")
        try:
            async with grpc.aio.insecure_channel(self.address) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            return False

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 20)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    s = Serve(tmp_path / "data")
    yield s
    if s.proc is not None and s.proc.returncode is None:
        s.proc.kill()
        await s.proc.wait()
    for pid in _etcd_pids(s.data_dir):
        os.kill(pid, signal.SIGKILL)


async def test_serve_restart_keeps_state_and_sigterm_stops_etcd(serve: Serve) -> None:
    await serve.start()
    async with grpc.aio.insecure_channel(serve.address) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        await stub.Register(
            registry_pb2.RegisterRequest(
                service="data-bridge", host="db", port=8001, ttl_seconds=600
            )
        )
    assert len(_etcd_pids(serve.data_dir)) == 1
    assert await serve.signal(signal.SIGTERM) == 0
    assert _etcd_pids(serve.data_dir) == []

    await serve.start()
    async with grpc.aio.insecure_channel(serve.address) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        resp = await stub.GetService(registry_pb2.GetServiceRequest(service="data-bridge"))
    assert [i.instance_id for i in resp.service.instances] == ["db-8001"]
    assert await serve.signal(signal.SIGINT) == 0
    assert _etcd_pids(serve.data_dir) == []


async def test_killed_hub_leaves_no_etcd_behind(serve: Serve) -> None:
    await serve.start()
    assert len(_etcd_pids(serve.data_dir)) == 1
    await serve.signal(signal.SIGKILL)
    await eventually(lambda: _etcd_pids(serve.data_dir) == [], timeout=10)
    await serve.start()  # the data dir is free again


async def test_grpcurl_through_reflection(serve: Serve) -> None:
    await serve.start()
    grpcurl = str(BIN / "grpcurl")
    listed = await asyncio.to_thread(
        subprocess.run, [grpcurl, "-plaintext", serve.address, "list"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "aitrading.hub.v1.RegistryService" in listed.stdout, listed.stderr
    registered = await asyncio.to_thread(
        subprocess.run,
        [grpcurl, "-plaintext", "-d", '{"service":"api-gateway","host":"gw","port":8000}',
         serve.address, "aitrading.hub.v1.RegistryService/Register"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert '"instanceId": "gw-8000"' in registered.stdout or '"instance_id": "gw-8000"' in (
        registered.stdout
    ), registered.stderr


async def test_workers_share_one_port_and_elect_one_leader(serve: Serve) -> None:
    await serve.start("--workers", "2")
    replicas: set[str] = set()

    async def both_workers_seen() -> bool:
        # Each new connection may land on either worker (SO_REUSEPORT).
        async with grpc.aio.insecure_channel(serve.address) as ch:
            status = await cluster_pb2_grpc.ClusterServiceStub(ch).GetClusterStatus(
                cluster_pb2.GetClusterStatusRequest()
            )
        replicas.add(status.hub_id)
        return len(status.replicas) == 2 and sum(r.leader for r in status.replicas) == 1

    await eventually(both_workers_seen, timeout=30)
    async with grpc.aio.insecure_channel(serve.address) as ch:
        await registry_pb2_grpc.RegistryServiceStub(ch).Register(
            registry_pb2.RegisterRequest(service="fx", host="h", port=1, ttl_seconds=60)
        )

    async def found() -> bool:
        async with grpc.aio.insecure_channel(serve.address) as ch:
            try:
                resp = await registry_pb2_grpc.RegistryServiceStub(ch).GetService(
                    registry_pb2.GetServiceRequest(service="fx")
                )
            except grpc.aio.AioRpcError:
                return False  # that worker's view has not caught up yet
        return [i.instance_id for i in resp.service.instances] == ["h-1"]

    for _ in range(6):  # whichever worker answers has it (within moments)
        await eventually(found, timeout=5)
    assert await serve.signal(signal.SIGTERM) == 0
    await eventually(lambda: _etcd_pids(serve.data_dir) == [], timeout=10)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ui-listen", "0.0.0.0:{port}"], "refusing to serve the dashboard on 0.0.0.0"),
        (
            ["--ui-listen", "0.0.0.0:nope"],
            "ui_listen (from flag --ui-listen): '0.0.0.0:nope': expected HOST:PORT",
        ),
        (
            ["--metrics-listen", "0.0.0.0"],
            "metrics_listen (from flag --metrics-listen): '0.0.0.0': expected HOST:PORT",
        ),
    ],
)
async def test_serve_refuses_a_bad_side_listener_before_starting(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    data_dir = tmp_path / "data"
    argv = [f.format(port=free_port()) for f in flags]
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "central-hub"), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(data_dir), *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"central-hub: {message}"), proc.stderr
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
    assert not data_dir.exists()  # refused before etcd started or the data dir was made


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("program", ["central-hub", "hubctl"])
def test_version_names_package_commit_and_api(program: str) -> None:
    from hub_client import version_info

    done = _run(str(BIN / program), "--version")
    assert done.returncode == 0, done.stderr
    info = version_info()
    assert info.api == "aitrading.hub.v1"
    # The commit shows when the code runs from a git checkout (as here, normally).
    in_git = subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode == 0
    assert bool(info.commit) == in_git
    commit = f"commit {info.commit}, " if info.commit else ""
    expected = f"{program} {info.version} ({commit}API aitrading.hub.v1)"
    assert done.stdout.strip() == expected


def _health(*argv: str) -> subprocess.CompletedProcess[str]:
    return _run(str(BIN / "central-hub"), "health", "--timeout", "3", *argv)


async def test_health_probe_exits_0_only_while_serving(serve: Serve) -> None:
    unused = _health("--target", f"127.0.0.1:{free_port()}")
    assert unused.returncode == 3, unused
    assert unused.stderr.count("\n") == 1 and "UNAVAILABLE" in unused.stderr

    await serve.start()
    serving = await asyncio.to_thread(_health, "--target", serve.address)
    assert (serving.returncode, serving.stdout) == (0, f"{serve.address}: SERVING\n")
    unknown = await asyncio.to_thread(_health, "--target", serve.address, "--service", "nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr

    # etcd frozen: the hub's own health turns NOT_SERVING, and so does the probe's answer.
    [etcd] = _etcd_pids(serve.data_dir)
    os.kill(etcd, signal.SIGSTOP)
    try:

        async def not_serving() -> bool:
            done = await asyncio.to_thread(_health, "--target", serve.address)
            return done.returncode == 1 and "NOT_SERVING" in done.stderr

        await eventually(not_serving, timeout=30)
    finally:
        os.kill(etcd, signal.SIGCONT)
    assert await serve.signal(signal.SIGTERM) == 0
    stopped = await asyncio.to_thread(_health, "--target", serve.address)
    assert stopped.returncode == 3


def test_health_usage_errors_exit_2() -> None:
    assert _health("--timeout", "0").returncode == 2
    assert _run(str(BIN / "central-hub"), "health", "--bogus").returncode == 2


def test_health_probe_imports_no_server() -> None:
    # Probes run every few seconds for a replica's life: the server's imports
    # would be most of their CPU.
    code = (
        "import sys; from hub_server.console import main; rc = main(['health', '--target',"
        f" '127.0.0.1:{free_port()}', '--timeout', '1']);"
        "print(sorted(m for m in sys.modules if m.startswith('hub_server')))"
    )
    done = _run(sys.executable, "-c", code)
    assert done.stdout.strip() == "['hub_server', 'hub_server.console', 'hub_server.probe']", done


async def test_cluster_status_carries_each_replicas_version(serve: Serve) -> None:
    from hub_client import HubClient, version_info

    await serve.start()
    build = version_info().build
    assert build.startswith(version_info().version) and build
    async with grpc.aio.insecure_channel(serve.address) as ch:
        status = await cluster_pb2_grpc.ClusterServiceStub(ch).GetClusterStatus(
            cluster_pb2.GetClusterStatusRequest()
        )
    assert status.version == build  # the answering replica
    assert [r.version for r in status.replicas] == [build]  # from its presence record
    async with HubClient(serve.address) as client:
        assert (await client.cluster_status()).version == build
