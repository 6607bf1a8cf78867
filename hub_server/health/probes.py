"""The probes themselves: HTTP GET, gRPC health Check, TCP connect.

HTTP is spoken directly over asyncio streams (a GET and a status line is all a
health check needs), so probing adds no HTTP client dependency and no pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import grpc
from aitrading.hub.v1 import types_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub_server.health.service import ProbeResult

_MAX_BODY = 4096


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def probe(instance: types_pb2.Instance, timeout: float) -> ProbeResult:
    kind = instance.health_check.WhichOneof("check")
    start = time.perf_counter()
    try:
        if kind == "http":
            return await asyncio.wait_for(_http(instance, start), timeout)
        if kind == "grpc":
            return await _grpc(instance, timeout, start)
        if kind == "tcp":
            return await asyncio.wait_for(_tcp(instance, start), timeout)
        return ProbeResult(True, 0.0)
    except TimeoutError:
        return ProbeResult(False, _elapsed_ms(start), message=f"timed out after {timeout}s")
    except OSError as e:
        return ProbeResult(False, _elapsed_ms(start), message=f"{type(e).__name__}: {e}")


async def _tcp(instance: types_pb2.Instance, start: float) -> ProbeResult:
    _, writer = await asyncio.open_connection(instance.host, instance.port)
    latency = _elapsed_ms(start)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return ProbeResult(True, latency)


async def _http(instance: types_pb2.Instance, start: float) -> ProbeResult:
    tls = None
    if instance.protocol == types_pb2.PROTOCOL_HTTPS:
        # Like Consul's tls_skip_verify: a probe asks "is it up", not "who is it".
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(instance.host, instance.port, ssl=tls)
    try:
        path = instance.health_check.http.path or "/"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {instance.host}:{instance.port}\r\n"
            "User-Agent: central-hub-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.decode("latin-1").split()
        if len(parts) < 2 or not parts[1].isdigit():
            return ProbeResult(False, _elapsed_ms(start), message="not an HTTP response")
        code = int(parts[1])
        latency = _elapsed_ms(start)
        head = await reader.readuntil(b"\r\n\r\n")
        degraded = b"x-health-status: degraded" in head.lower()
        if not degraded:
            with contextlib.suppress(Exception):
                body = await asyncio.wait_for(reader.read(_MAX_BODY), 0.2)
                compact = body.lower().replace(b" ", b"")
                degraded = b'"status":"degraded"' in compact
        if 200 <= code < 300:
            return ProbeResult(
                True, latency, degraded=degraded, message="reported degraded" if degraded else ""
            )
        return ProbeResult(False, latency, message=f"HTTP {code}")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _grpc(instance: types_pb2.Instance, timeout: float, start: float) -> ProbeResult:
    # A channel per probe keeps no state to clean up when instances go away; at
    # the default 10 s interval the connection set-up is negligible.
    async with grpc.aio.insecure_channel(f"{instance.host}:{instance.port}") as channel:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=instance.health_check.grpc.service),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as e:
            return ProbeResult(False, _elapsed_ms(start), message=f"gRPC {e.code().name}")
    latency = _elapsed_ms(start)
    if resp.status == health_pb2.HealthCheckResponse.SERVING:
        return ProbeResult(True, latency)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return ProbeResult(False, latency, message=f"gRPC health {name}")
