"""`central-hub serve --workers N`: N serving processes on one port.

gRPC's Python server is bound by one event loop, so one process uses about one
core. Here a supervisor starts the embedded etcd (if any) and N worker
processes, each a full hub replica with its own watch-fed views, all listening on
the same address with SO_REUSEPORT so the kernel spreads connections over them.
Leader-only work stays exactly-once: the workers elect a leader among themselves
like any replicas do. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from pathlib import Path

from hub_server.app import HubConfig
from hub_server.embedded_etcd import EtcdProcess, embedded

log = logging.getLogger(__name__)


def _worker_args(
    config: HubConfig, endpoints: list[str], index: int, extra: list[str]
) -> list[str]:
    hub_id = f"{config.hub_id or 'hub'}-w{index}"
    args = [
        sys.executable, "-m", "hub_server.cli", "serve",
        "--listen", config.listen,
        "--etcd-endpoints", ",".join(endpoints),
        "--hub-id", hub_id,
        *extra,
    ]  # fmt: skip
    setpriv = shutil.which("setpriv")
    # Workers die with the supervisor, whatever kills it.
    return [setpriv, "--pdeathsig", "TERM", "--", *args] if setpriv else args


async def supervise(
    config: HubConfig, workers: int, extra_args: list[str], env: dict[str, str] | None = None
) -> None:
    """Runs ``workers`` hub processes (with ``env``, default ours) until
    SIGINT/SIGTERM, then stops them."""
    etcd: EtcdProcess | None = None
    endpoints = config.etcd_endpoints
    if not endpoints:
        etcd = embedded(
            Path(config.data_dir),
            client_port=config.etcd_client_port,
            peer_port=config.etcd_peer_port,
        )
        await etcd.start_async()
        endpoints = [etcd.endpoint]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    procs: dict[int, asyncio.subprocess.Process] = {}

    def reload_credentials() -> None:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload_credentials)

    async def run_worker(index: int) -> None:
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                *_worker_args(config, endpoints, index, extra_args), env=env
            )
            procs[index] = proc
            code = await proc.wait()
            if not stop.is_set():
                log.warning("worker %d exited with %s; starting it again", index, code)
                await asyncio.sleep(1)

    tasks = [asyncio.create_task(run_worker(i)) for i in range(workers)]
    print(f"central hub: {workers} workers on {config.listen}", flush=True)
    try:
        await stop.wait()
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), config.shutdown_grace + 10)
        for task in tasks:
            task.cancel()
        if etcd is not None:
            await asyncio.to_thread(etcd.stop)
