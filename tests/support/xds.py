"""Real parts for the xDS client tests: backend gRPC servers that say who they are,
bootstrap files from ``central-hub xds-bootstrap``, and proxyless grpcio clients
each in its own process (tests/xds/grpcio_client.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hub_server.embedded_etcd import free_port

ROOT = Path(__file__).resolve().parents[2]
BACKEND = "hubtest.Backend"


class Backend:
    """A gRPC server with the standard health service (which the hub probes) and
    ``hubtest.Backend``: ``Who`` answers its name, ``SetServing`` (b"1" / b"0")
    flips its health and ``Do`` runs one of the test's ``actions`` by name, for
    clients in other processes (the Node test)."""

    def __init__(
        self, name: str, actions: dict[str, Callable[[], Awaitable[None]]] | None = None
    ) -> None:
        self.name = name
        self.actions = actions or {}
        self.port = free_port()
        self.health = health.aio.HealthServicer()
        self.calls = 0
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        return self.name.encode()

    async def _set_serving(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await self.set_serving(request == b"1")
        return b""

    async def _do(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        action = self.actions.get(request.decode())
        if action is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {request!r}")
        else:
            await action()
        return b""

    async def start(self) -> None:
        self._server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        handlers = {
            "Who": grpc.unary_unary_rpc_method_handler(self._who),
            "SetServing": grpc.unary_unary_rpc_method_handler(self._set_serving),
            "Do": grpc.unary_unary_rpc_method_handler(self._do),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(BACKEND, handlers),)
        )
        self._server.add_insecure_port(self.address)
        await self._server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None


async def write_bootstrap(path: Path, *args: str) -> Path:
    """Writes the bootstrap ``central-hub xds-bootstrap ARGS`` prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub_server.cli", "xds-bootstrap", *args, "--output", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return path


class GrpcioClient:
    """A grpcio process calling ``xds:///<service>`` with a bootstrap file."""

    def __init__(self, bootstrap: Path, service: str) -> None:
        self._bootstrap = bootstrap
        self._service = service
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> GrpcioClient:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(self._bootstrap)}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests/xds/grpcio_client.py"), self._service,
            cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )  # fmt: skip
        assert (await self._read())["ready"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _read(self, timeout: float = 60.0) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        assert line, f"the grpcio client exited ({self._proc.returncode})"
        return json.loads(line)

    async def calls(
        self, n: int, *, user: str | None = None, timeout: float = 5.0
    ) -> tuple[Counter[str], Counter[str]]:
        """Makes ``n`` calls; returns (calls per backend name, errors per status)."""
        assert self._proc is not None and self._proc.stdin is not None
        command = {"calls": n, "user": user, "timeout": timeout}
        self._proc.stdin.write((json.dumps(command) + "\n").encode())
        await self._proc.stdin.drain()
        answer = await self._read(timeout=n * timeout + 30)
        return Counter(answer["backends"]), Counter(answer["errors"])
