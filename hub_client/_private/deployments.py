"""Deployments on the client side: starting and steering roll-outs, typed
results, progress and directive streams that resume after a disconnect, and a
Deployer that follows a roll-out to its end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aitrading.hub.v1 import deployment_pb2

from hub_client._private import to_pb
from hub_client._private.models import _enum_name, lookup
from hub_client._private.resume import each_within, resume_watch
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "ABORTED", "ROLLED_BACK"})


@dataclass(frozen=True)
class DeploymentBatch:
    index: int
    instance_ids: list[str]
    state: str  # PENDING, DRAINING, OBSERVING, DONE, CANCELLED
    replacement_ids: list[str]
    canary: bool


@dataclass(frozen=True)
class Deployment:
    """A roll-out as the hub last reported it; ``raw`` is the message."""

    id: str
    service: str
    target_version: str
    strategy: str  # ROLLING or CANARY
    state: str  # PENDING, RUNNING, PAUSED, SUCCEEDED, FAILED, ABORTED, ROLLING_BACK, ROLLED_BACK
    batches: list[DeploymentBatch]
    current_batch: int
    reason: str
    phase: str
    revision: int
    raw: deployment_pb2.Deployment = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_pb(cls, m: deployment_pb2.Deployment) -> Deployment:
        return cls(
            id=m.id,
            service=m.service,
            target_version=m.target_version,
            strategy=_enum_name(
                deployment_pb2.DeploymentStrategy, m.strategy, "DEPLOYMENT_STRATEGY_", lower=False
            ),
            state=_enum_name(
                deployment_pb2.DeploymentState, m.state, "DEPLOYMENT_STATE_", lower=False
            ),
            batches=[
                DeploymentBatch(
                    b.index,
                    list(b.instance_ids),
                    _enum_name(deployment_pb2.BatchState, b.state, "BATCH_STATE_", lower=False),
                    list(b.replacement_ids),
                    b.canary,
                )
                for b in m.batches
            ],
            current_batch=m.current_batch,
            reason=m.reason,
            phase=m.phase,
            revision=m.revision,
            raw=m,
        )


@dataclass(frozen=True)
class Directive:
    """What the hub tells one instance: DRAIN, UPGRADE (to ``target_version``),
    RETIRE or RESUME."""

    service: str
    instance_id: str
    action: str
    target_version: str
    deployment_id: str
    batch: int
    revision: int

    @classmethod
    def from_pb(cls, m: deployment_pb2.Directive) -> Directive:
        return cls(
            m.service,
            m.instance_id,
            _enum_name(deployment_pb2.DirectiveAction, m.action, "DIRECTIVE_ACTION_", lower=False),
            m.target_version,
            m.deployment_id,
            m.batch,
            m.revision,
        )


async def _resuming(
    open_stream: Callable[[int], Any], handle: Callable[[Any], list[Any]]
) -> AsyncIterator[Any]:
    """What ``handle`` makes of every message of a resuming hub watch stream."""
    stream = resume_watch(open_stream)
    async with contextlib.aclosing(stream):
        async for msg in stream:
            for item in handle(msg):
                yield item


_STRATEGIES = {
    "rolling": deployment_pb2.DEPLOYMENT_STRATEGY_ROLLING,
    "canary": deployment_pb2.DEPLOYMENT_STRATEGY_CANARY,
}


class DeploymentsClient:
    """The DeploymentService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def deploy(
        self,
        service: str,
        target_version: str,
        *,
        strategy: str,
        batch_size: int,
        max_unavailable: int,
        health_gate_timeout: float | None,
        canary_share: float,
        canary_observation: float | None,
        rollback_on_failure: bool,
        timeout: float | None = None,
    ) -> Deployment:
        strategy_value = lookup(_STRATEGIES, strategy, "strategy")
        settings = deployment_pb2.DeploymentSettings(
            batch_size=batch_size,
            max_unavailable=max_unavailable,
            health_gate_timeout=to_pb.duration(health_gate_timeout),
            canary_share=canary_share,
            canary_observation=to_pb.duration(canary_observation),
            rollback_on_failure=rollback_on_failure,
        )
        t = self._transport
        resp = await t.call(
            t.deployment_stub.StartDeployment,
            deployment_pb2.StartDeploymentRequest(
                service=service,
                target_version=target_version,
                strategy=strategy_value,
                settings=settings,
            ),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    async def deployment(self, deployment_id: str, *, timeout: float | None = None) -> Deployment:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.GetDeployment,
            deployment_pb2.GetDeploymentRequest(id=deployment_id),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    async def deployments(
        self, service: str, *, active_only: bool, timeout: float | None = None
    ) -> list[Deployment]:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.ListDeployments,
            deployment_pb2.ListDeploymentsRequest(service=service, active_only=active_only),
            timeout=timeout,
        )
        return [Deployment.from_pb(d) for d in resp.deployments]

    async def pause(
        self, deployment_id: str, reason: str, *, timeout: float | None = None
    ) -> Deployment:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.PauseDeployment,
            deployment_pb2.PauseDeploymentRequest(id=deployment_id, reason=reason),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    async def resume(self, deployment_id: str, *, timeout: float | None = None) -> Deployment:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.ResumeDeployment,
            deployment_pb2.ResumeDeploymentRequest(id=deployment_id),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    async def abort(
        self, deployment_id: str, reason: str, *, timeout: float | None = None
    ) -> Deployment:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.AbortDeployment,
            deployment_pb2.AbortDeploymentRequest(id=deployment_id, reason=reason),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    async def rollback(
        self, deployment_id: str, reason: str, *, timeout: float | None = None
    ) -> Deployment:
        t = self._transport
        resp = await t.call(
            t.deployment_stub.RollbackDeployment,
            deployment_pb2.RollbackDeploymentRequest(id=deployment_id, reason=reason),
            timeout=timeout,
        )
        return Deployment.from_pb(resp.deployment)

    def watch_deployment(
        self, deployment_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[Deployment]:
        t = self._transport

        def open_stream(start: int) -> Any:
            return t.open_stream(
                t.deployment_stub.WatchDeployment,
                deployment_pb2.WatchDeploymentRequest(id=deployment_id, start_revision=start),
            )

        def handle(msg: deployment_pb2.WatchDeploymentResponse) -> list[Deployment]:
            return [Deployment.from_pb(msg.deployment)] if msg.HasField("deployment") else []

        return each_within(
            _resuming(open_stream, handle), timeout, f"watch_deployment {deployment_id}"
        )

    def watch_directives(
        self, service: str, instance_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[Directive]:
        t = self._transport

        def open_stream(start: int) -> Any:
            return t.open_stream(
                t.deployment_stub.WatchDirectives,
                deployment_pb2.WatchDirectivesRequest(
                    service=service, instance_id=instance_id, start_revision=start
                ),
            )

        def handle(msg: deployment_pb2.WatchDirectivesResponse) -> list[Directive]:
            return [Directive.from_pb(d) for d in msg.directives]

        return each_within(_resuming(open_stream, handle), timeout, f"watch_directives {service}")


class _Deploys(Protocol):
    """What a Deployer needs of a hub client (HubClient has it)."""

    async def deploy(self, service: str, target_version: str, **options: Any) -> Deployment: ...

    def watch_deployment(self, deployment_id: str) -> AsyncIterator[Deployment]: ...


ProgressCallback = Callable[[Deployment], Awaitable[None] | None]


class Deployer:
    """Starts a roll-out and follows it to a final state::

        result = await Deployer(hub).run("quotes", "2.0.0", batch_size=5)

    ``on_progress`` is called with every new state of the deployment.
    """

    def __init__(self, hub: _Deploys, *, on_progress: ProgressCallback | None = None) -> None:
        self.hub = hub
        self.on_progress = on_progress
        self.history: list[Deployment] = []

    async def run(self, service: str, target_version: str, **options: Any) -> Deployment:
        started = await self.hub.deploy(service, target_version, **options)
        return await self.follow(started.id)

    async def follow(self, deployment_id: str) -> Deployment:
        async for d in self.hub.watch_deployment(deployment_id):
            if self.history and self.history[-1].revision == d.revision:
                continue
            self.history.append(d)
            if self.on_progress is not None:
                result = self.on_progress(d)
                if asyncio.iscoroutine(result):
                    await result
            if d.finished:
                return d
        raise RuntimeError("the deployment stream ended")  # pragma: no cover
