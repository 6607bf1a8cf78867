"""DeploymentService: check the request, call Deployments, fill the header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from aitrading.hub.v1 import deployment_pb2, deployment_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from hub_server.deployments import rollout
from hub_server.deployments.service import StoredDeployment
from hub_server.kernel import validation
from hub_server.kernel.errors import Violations
from hub_server.rpc.context import audit_note, audited
from hub_server.rpc.header import response_header
from hub_server.rpc.streaming import watch_stream
from hub_server.store import keys
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import REMOVED, Change

MAX_VERSION = 128
MAX_REASON = 1024  # bytes: kept in the deployment's record


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _ts(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def settings_from_pb(m: deployment_pb2.DeploymentSettings) -> rollout.Settings:
    s = rollout.Settings(
        batch_size=m.batch_size or 1,
        max_unavailable=m.max_unavailable,
        health_gate_timeout=_seconds(m.health_gate_timeout) or rollout.DEFAULT_GATE,
        canary_share=m.canary_share or rollout.DEFAULT_CANARY_SHARE,
        canary_observation=(
            _seconds(m.canary_observation)
            if m.HasField("canary_observation")
            else rollout.DEFAULT_OBSERVATION
        ),
        rollback_on_failure=m.rollback_on_failure,
    )
    v = Violations()
    for path, description in s.validate():
        v.add(path, description)
    v.raise_if_any()
    return s


def settings_to_pb(s: rollout.Settings) -> deployment_pb2.DeploymentSettings:
    return deployment_pb2.DeploymentSettings(
        batch_size=s.batch_size,
        max_unavailable=s.max_unavailable,
        health_gate_timeout=_duration(s.health_gate_timeout),
        canary_share=s.canary_share,
        canary_observation=_duration(s.canary_observation),
        rollback_on_failure=s.rollback_on_failure,
    )


def deployment_to_pb(stored: StoredDeployment) -> deployment_pb2.Deployment:
    d = stored.deployment
    return deployment_pb2.Deployment(
        id=d.id,
        service=d.service,
        target_version=d.target_version,
        strategy=d.strategy,
        state=d.state,
        batches=[
            deployment_pb2.Batch(
                index=b.index,
                instance_ids=b.instances,
                state=b.state,
                replacement_ids=b.replacements,
                started_at=_ts(b.started_at),
                healthy_at=_ts(b.healthy_at),
                finished_at=_ts(b.finished_at),
                canary=b.canary,
            )
            for b in d.batches
        ],
        current_batch=d.current,
        reason=d.reason,
        created_at=_ts(d.created_at),
        updated_at=_ts(d.updated_at),
        finished_at=_ts(d.finished_at),
        revision=stored.revision,
        settings=settings_to_pb(d.settings),
        previous_version=d.previous_version,
        phase=d.phase,
    )


def progress_to_pb(d: rollout.Deployment) -> deployment_pb2.DeploymentProgress:
    batch, batches, counts, phase = rollout.progress(d)
    return deployment_pb2.DeploymentProgress(
        batch=batch, batches=batches, instances=counts, phase=phase
    )


def _check_id(deployment_id: str, reason: str = "") -> None:
    v = Violations()
    validation.check_safe_id(v, "id", deployment_id)
    if len(reason.encode()) > MAX_REASON:
        v.add("reason", f"must be at most {MAX_REASON} bytes")
    v.raise_if_any()


class DeploymentControl(Protocol):
    """What the servicer uses of the deployments
    (hub_server.deployments.service.Deployments)."""

    @property
    def revision(self) -> int: ...
    @property
    def log(self) -> EventLog[Change[StoredDeployment]]: ...
    @property
    def directives_log(self) -> EventLog[Change[deployment_pb2.Directive]]: ...
    def get(self, deployment_id: str) -> StoredDeployment: ...
    def lookup(self, deployment_id: str) -> StoredDeployment | None: ...
    def find(self, service: str = "", *, active_only: bool = False) -> list[StoredDeployment]: ...
    def directives_snapshot(self) -> tuple[list[deployment_pb2.Directive], int]: ...
    async def start(
        self, service: str, target_version: str, strategy: int, settings: rollout.Settings
    ) -> StoredDeployment: ...
    async def pause(self, deployment_id: str, reason: str = "") -> StoredDeployment: ...
    async def resume(self, deployment_id: str) -> StoredDeployment: ...
    async def abort(self, deployment_id: str, reason: str = "") -> StoredDeployment: ...
    async def rollback(self, deployment_id: str, reason: str = "") -> StoredDeployment: ...
    async def release_drains(
        self, deployment_id: str
    ) -> tuple[StoredDeployment, list[str], int]: ...


class DeploymentServicer(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(
        self, deployments: DeploymentControl, hub_id: str, *, progress_interval: float = 10.0
    ) -> None:
        self._deployments = deployments
        self._hub_id = hub_id
        self.progress_interval = progress_interval

    @audited
    async def StartDeployment(self, request, context):
        audit_note(target=f"deployment/{request.service}", version=request.target_version)
        v = Violations()
        validation.check_dns_label(v, "service", request.service)
        if not request.target_version:
            v.add("target_version", "is required")
        elif len(request.target_version) > MAX_VERSION:
            v.add("target_version", f"at most {MAX_VERSION} characters")
        strategy = request.strategy or deployment_pb2.DEPLOYMENT_STRATEGY_ROLLING
        if strategy not in (rollout.ROLLING, rollout.CANARY):
            v.add("strategy", "must be ROLLING or CANARY")
        v.raise_if_any()
        settings = settings_from_pb(request.settings)
        stored = await self._deployments.start(
            request.service, request.target_version, strategy, settings
        )
        audit_note(target=f"deployment/{request.service}/{stored.deployment.id}")
        return deployment_pb2.StartDeploymentResponse(
            header=response_header(self._hub_id, stored.revision),
            deployment=deployment_to_pb(stored),
        )

    async def GetDeployment(self, request, context):
        _check_id(request.id)
        stored = self._deployments.get(request.id)
        return deployment_pb2.GetDeploymentResponse(
            header=response_header(self._hub_id, self._deployments.revision),
            deployment=deployment_to_pb(stored),
            progress=progress_to_pb(stored.deployment),
        )

    async def ListDeployments(self, request, context):
        v = Violations()
        validation.check_dns_label(v, "service", request.service, required=False)
        v.raise_if_any()
        found = self._deployments.find(request.service, active_only=request.active_only)
        return deployment_pb2.ListDeploymentsResponse(
            header=response_header(self._hub_id, self._deployments.revision),
            deployments=[deployment_to_pb(s) for s in found],
        )

    async def _operate(self, request, verb: str, op):
        _check_id(request.id, getattr(request, "reason", ""))
        audit_note(target=f"deployment/{request.id}", action=verb)
        before = self._deployments.get(request.id)
        stored = await op()
        audit_note(
            version_before=rollout.state_name(before.deployment.state),
            version_after=rollout.state_name(stored.deployment.state),
        )
        return response_header(self._hub_id, stored.revision), deployment_to_pb(stored)

    @audited
    async def PauseDeployment(self, request, context):
        header, d = await self._operate(
            request, "pause", lambda: self._deployments.pause(request.id, request.reason)
        )
        return deployment_pb2.PauseDeploymentResponse(header=header, deployment=d)

    @audited
    async def ResumeDeployment(self, request, context):
        header, d = await self._operate(
            request, "resume", lambda: self._deployments.resume(request.id)
        )
        return deployment_pb2.ResumeDeploymentResponse(header=header, deployment=d)

    @audited
    async def AbortDeployment(self, request, context):
        header, d = await self._operate(
            request, "abort", lambda: self._deployments.abort(request.id, request.reason)
        )
        return deployment_pb2.AbortDeploymentResponse(header=header, deployment=d)

    @audited
    async def RollbackDeployment(self, request, context):
        header, d = await self._operate(
            request, "rollback", lambda: self._deployments.rollback(request.id, request.reason)
        )
        return deployment_pb2.RollbackDeploymentResponse(header=header, deployment=d)

    @audited
    async def ReleaseDeploymentDrains(self, request, context):
        _check_id(request.id, request.reason)
        audit_note(target=f"deployment/{request.id}", action="release-drains")
        if request.reason:  # kept in the audit trail only: the record is not changed
            audit_note(reason=request.reason)
        stored, released, revision = await self._deployments.release_drains(request.id)
        state = rollout.state_name(stored.deployment.state)
        audit_note(version_before=state, version_after=state, released=",".join(released) or "-")
        return deployment_pb2.ReleaseDeploymentDrainsResponse(
            header=response_header(self._hub_id, revision),
            deployment=deployment_to_pb(stored),
            released_instance_ids=released,
        )

    async def WatchDeployment(
        self, request, context
    ) -> AsyncIterator[deployment_pb2.WatchDeploymentResponse]:
        _check_id(request.id)
        deployments = self._deployments
        key = keys.deployment_key(request.id)
        deployments.get(request.id)  # NOT_FOUND up front

        def snapshot() -> tuple[list[StoredDeployment], int]:
            stored = deployments.lookup(request.id)
            return ([stored] if stored is not None else []), deployments.revision

        def select(change: Change[StoredDeployment]) -> StoredDeployment | None:
            if change.key != key or change.type == REMOVED:
                return None
            return change.value

        def respond(kind, items, revision, more, compact):
            msg = deployment_pb2.WatchDeploymentResponse(
                header=response_header(self._hub_id, revision), kind=kind, compact_revision=compact
            )
            if items:
                last = items[-1]  # the newest state is what a progress display wants
                msg.deployment.CopyFrom(deployment_to_pb(last))
                msg.progress.CopyFrom(progress_to_pb(last.deployment))
            return msg

        async for response in watch_stream(
            deployments.log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
        ):
            yield response

    async def WatchDirectives(
        self, request, context
    ) -> AsyncIterator[deployment_pb2.WatchDirectivesResponse]:
        service, instance_id = request.service, request.instance_id
        v = Violations()
        validation.check_dns_label(v, "service", service)
        validation.check_safe_id(v, "instance_id", instance_id, required=False)
        v.raise_if_any()

        def wanted(d: deployment_pb2.Directive) -> bool:
            return d.service == service and (not instance_id or d.instance_id == instance_id)

        def snapshot() -> tuple[list[deployment_pb2.Directive], int]:
            directives, revision = self._deployments.directives_snapshot()
            return [d for d in directives if wanted(d)], revision

        def select(change: Change[deployment_pb2.Directive]) -> deployment_pb2.Directive | None:
            d = change.value
            if change.type == REMOVED or d is None or not wanted(d):
                return None
            return d

        def respond(kind, items, revision, more, compact):
            return deployment_pb2.WatchDirectivesResponse(
                header=response_header(self._hub_id, revision), kind=kind, directives=items,
                compact_revision=compact,
            )  # fmt: skip

        async for response in watch_stream(
            self._deployments.directives_log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
        ):
            yield response
