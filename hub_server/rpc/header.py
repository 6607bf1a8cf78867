"""The header every response carries: the store revision it reflects and the
hub replica that answered."""

from __future__ import annotations

from aitrading.hub.v1 import types_pb2


def response_header(hub_id: str, revision: int) -> types_pb2.ResponseHeader:
    return types_pb2.ResponseHeader(revision=revision, hub_id=hub_id)
