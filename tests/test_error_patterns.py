"""ErrorDNA patterns reported by services and aggregated across hub replicas."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc

from hub_client import ErrorDNA, HubClient
from hub_server.app import Hub
from hub_server.observability.error_patterns import merge
from tests.support.hubs import HubFactory


def _stub(hub: Hub) -> tuple[grpc.aio.Channel, observability_pb2_grpc.ObservabilityServiceStub]:
    ch = grpc.aio.insecure_channel(hub.address)
    return ch, observability_pb2_grpc.ObservabilityServiceStub(ch)


def test_merge_adds_counts_and_widens_the_time_span() -> None:
    a = obs.ErrorPattern(fingerprint="ab" * 8, count=3, sample="first")
    a.first_seen.FromSeconds(100)
    a.last_seen.FromSeconds(200)
    b = obs.ErrorPattern(fingerprint="ab" * 8, count=2, sample="second")
    b.first_seen.FromSeconds(50)
    b.last_seen.FromSeconds(150)
    m = merge(a, b)
    assert (m.count, m.sample) == (5, "first")
    assert (m.first_seen.seconds, m.last_seen.seconds) == (50, 200)
    assert merge(None, b) == b


async def test_reports_from_many_services_and_replicas_add_up(
    hub_factory: HubFactory,
) -> None:
    a, b = await hub_factory(), await hub_factory()
    dna = ErrorDNA("pricing")
    for port in (5432, 5433, 6000):
        message = f"Connect call failed ('10.0.0.{port % 7}', {port})"
        dna.analyze(ConnectionRefusedError(111, message))
    dna.analyze(TimeoutError("read timed out after 30.2s"))
    deltas = dna.drain_report()
    assert sum(d.count for d in deltas) == 4 and len(deltas) == 2
    patterns = [
        obs.ErrorPattern(
            fingerprint=d.fingerprint, category=d.category.value, severity=d.severity.value,
            exception_type=d.exception_type or "", normalized_message=d.normalized_message,
            sample=d.sample, count=d.count, tenant_id="company_abc",
        )
        for d in deltas
    ]  # fmt: skip
    ch_a, stub_a = _stub(a)
    ch_b, stub_b = _stub(b)
    async with ch_a, ch_b:
        # The same deltas land on both replicas at once, ten times each.
        await asyncio.gather(
            *(s.ReportErrors(obs.ReportErrorsRequest(service="pricing", patterns=patterns))
              for s in [stub_a, stub_b] * 10)
        )  # fmt: skip
        listed = (await stub_b.ListErrorPatterns(obs.ListErrorPatternsRequest())).patterns
        assert [p.count for p in listed] == [60, 20]  # most frequent first
        assert listed[0].category == "connection" and listed[1].category == "timeout"
        assert listed[0].service == "pricing" and listed[0].tenant_id == "company_abc"
        only = await stub_a.ListErrorPatterns(
            obs.ListErrorPatternsRequest(service="pricing", category="timeout")
        )
        assert [p.count for p in only.patterns] == [20]
        none = await stub_a.ListErrorPatterns(obs.ListErrorPatternsRequest(tenant_id="other"))
        assert list(none.patterns) == []


@pytest.mark.parametrize(
    ("pattern", "field"),
    [
        (obs.ErrorPattern(fingerprint="xyz", category="timeout", count=1),
         "patterns[0].fingerprint"),
        (obs.ErrorPattern(fingerprint="ab" * 8, category="nope", count=1),
         "patterns[0].category"),
        (obs.ErrorPattern(fingerprint="ab" * 8, category="timeout", count=0),
         "patterns[0].count"),
        (obs.ErrorPattern(fingerprint="ab" * 8, category="timeout", count=1, tenant_id="a/b"),
         "patterns[0].tenant_id"),
    ],
)  # fmt: skip
async def test_bad_reports_are_rejected_and_store_nothing(
    hub: Hub, client: HubClient, pattern: obs.ErrorPattern, field: str
) -> None:
    from hub_client._private.errors import InvalidArgument, from_rpc_error

    ch, stub = _stub(hub)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReportErrors(obs.ReportErrorsRequest(service="svc", patterns=[pattern]))
        error = from_rpc_error(err.value)
        assert isinstance(error, InvalidArgument)
        assert field in [v.field for v in error.field_violations]
        assert list((await stub.ListErrorPatterns(obs.ListErrorPatternsRequest())).patterns) == []
