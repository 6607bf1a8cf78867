"""A real 3-member etcd cluster on loopback for fault tests: start it, kill and
restart one member, stop and restart all of them keeping their data, and ask
which member leads raft and which members this process is connected to.

Ports are picked below the kernel's ephemeral range, so that while a member is
down no outgoing connection can take its port and keep it from restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from aetcd import rpc

from hub_server.embedded_etcd import EtcdProcess, free_port


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def stable_port(taken: set[int]) -> int:
    """A free loopback port outside the ephemeral range (else any free one)."""
    low, _ = _ephemeral_range()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low - 1000)
            if port not in taken and _is_free(port):
                taken.add(port)
                return port
    port = free_port()
    taken.add(port)
    return port


@dataclass(frozen=True)
class MemberStatus:
    name: str
    member_id: int
    leader_id: int
    revision: int
    raft_term: int
    raft_index: int
    applied_index: int


class EtcdCluster:
    """``size`` etcd members forming one cluster on loopback."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        taken: set[int] = set()
        peers = {f"m{i}": stable_port(taken) for i in range(size)}
        self.members = [
            EtcdProcess(
                Path(base_dir) / name,
                name=name,
                client_port=stable_port(taken),
                peer_port=peer,
                initial_cluster=peers,
            )
            for name, peer in peers.items()
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member(self, name: str) -> EtcdProcess:
        return next(m for m in self.members if m.name == name)

    def endpoints_first(self, first: EtcdProcess) -> list[str]:
        """Every endpoint, ``first`` first: a hub's channel (pick-first) connects
        to the first member that answers."""
        return [first.endpoint] + [m.endpoint for m in self.members if m is not first]

    # -- starting and stopping -------------------------------------------

    async def _start(self, members: list[EtcdProcess], timeout: float = 30.0) -> None:
        # Every member's process first: none is healthy before a quorum is up.
        for m in members:
            m.start_process()
        await asyncio.gather(*(asyncio.to_thread(m.wait_ready, timeout) for m in members))

    async def start(self) -> None:
        await self._start(self.members)
        await self.wait_leader()

    async def kill(self, member: EtcdProcess) -> None:
        """SIGKILL: the member stops as a crashed machine's would."""
        await asyncio.to_thread(member.kill)

    async def restart(self, member: EtcdProcess) -> None:
        """Starts a stopped member again on its ports and data; it rejoins."""
        await self._start([member])

    async def stop_all(self, *, kill: bool = False) -> None:
        """Stops every member, data kept: with ``kill`` all at once by SIGKILL,
        else one after another by SIGTERM (members stopped together each wait
        seconds for the others)."""
        if kill:
            await asyncio.gather(*(asyncio.to_thread(m.kill) for m in self.members))
            return
        for m in self.members:
            await asyncio.to_thread(m.stop)

    async def start_all(self) -> None:
        """Starts every member again from its data (the whole cluster restarts)."""
        await self._start(self.members)
        await self.wait_leader()

    async def close(self) -> None:
        await self.stop_all(kill=True)  # nothing to keep: no need to wait

    # -- looking at the cluster ------------------------------------------

    async def status(self, member: EtcdProcess, timeout: float = 2.0) -> MemberStatus:
        async with grpc.aio.insecure_channel(member.endpoint) as channel:
            resp = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=timeout)
        return MemberStatus(
            member.name,
            resp.header.member_id,
            resp.leader,
            resp.header.revision,
            resp.raftTerm,
            resp.raftIndex,
            resp.raftAppliedIndex,
        )

    async def statuses(self) -> list[MemberStatus]:
        """The status of every running member that answers."""
        out = []
        for m in self.members:
            if m.running:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    out.append(await self.status(m))
        return out

    async def wait_leader(self, timeout: float = 30.0) -> EtcdProcess:
        """The raft leader, once every running member agrees on one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.statuses()
            running = sum(m.running for m in self.members)
            leaders = {s.leader_id for s in found}
            if len(found) == running and len(leaders) == 1 and 0 not in leaders:
                (leader_id,) = leaders
                for s in found:
                    if s.member_id == leader_id:
                        return self.member(s.name)
            if loop.time() > deadline:
                raise TimeoutError(f"no agreed etcd leader after {timeout}s: {found}")
            await asyncio.sleep(0.1)

    async def leader(self) -> EtcdProcess:
        return await self.wait_leader()

    async def rejoined(self, member: EtcdProcess) -> bool:
        """Whether ``member`` follows the cluster's leader and has applied
        everything the leader had when asked (raft log and key-value revision)."""
        leader = await self.wait_leader()
        try:
            lead = await self.status(leader)
            mine = await self.status(member)
        except grpc.aio.AioRpcError:
            return False
        return (
            mine.leader_id == lead.member_id
            and mine.applied_index >= lead.raft_index
            and mine.revision >= lead.revision
        )

    async def read_local(self, member: EtcdProcess, key: bytes) -> bytes | None:
        """A key as ``member`` itself holds it (a serializable read: no quorum,
        no forwarding to the leader)."""
        async with grpc.aio.insecure_channel(member.endpoint) as channel:
            resp = await rpc.KVStub(channel).Range(
                rpc.RangeRequest(key=key, serializable=True), timeout=2
            )
        return resp.kvs[0].value if resp.kvs else None

    def connected_members(self) -> set[str]:
        """Members this process holds an established TCP connection to (on their
        client port): with one hub in the process, the member its store uses."""
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        by_port = {m.client_port: m.name for m in self.members}
        found = set()
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    remote, state, inode = fields[2], fields[3], fields[9]
                    port = int(remote.rsplit(":", 1)[1], 16)
                    if state == "01" and inode in inodes and port in by_port:
                        found.add(by_port[port])
        return found


@contextlib.asynccontextmanager
async def etcd_cluster(base_dir: Path, size: int = 3) -> AsyncIterator[EtcdCluster]:
    """A started cluster, stopped (every member) on exit."""
    cluster = EtcdCluster(base_dir, size)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
