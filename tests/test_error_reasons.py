"""Every google.rpc.ErrorInfo reason is a value of the protos' ErrorReason enum: the
hub raises only its values, the client maps them to typed exceptions, and on the wire
a reason is the value's name without the ERROR_REASON_ prefix."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import grpc
import pytest
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_NOT_FOUND,
    ERROR_REASON_SERVICE_NOT_FOUND,
    ERROR_REASON_UNSPECIFIED,
    ErrorReason,
)

import hub_server
from hub_client import HubError as ClientError
from hub_client import Ineligibility, ServiceNotFound
from hub_client._private import errors as client_errors
from hub_server.kernel import errors as server_errors
from hub_server.rpc.errors import to_status

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("hub_server", "hub_client", "hubctl")  # every package that raises or reads reasons
VALUES = [v for v in ErrorReason.values() if v != ERROR_REASON_UNSPECIFIED]
WIRE_NAMES = {server_errors.reason_text(v) for v in VALUES}


@pytest.mark.parametrize("value", VALUES, ids=ErrorReason.Name)
def test_every_value_round_trips_through_its_wire_name(value: int) -> None:
    text = server_errors.reason_text(value)  # type: ignore[arg-type]
    assert text == ErrorReason.Name(value).removeprefix("ERROR_REASON_")
    assert client_errors.reason_text(value) == text  # type: ignore[arg-type]
    assert client_errors.reason_value(text) == value


def test_a_missing_or_unknown_reason_is_unspecified() -> None:
    assert client_errors.reason_value("") == ERROR_REASON_UNSPECIFIED
    assert client_errors.reason_value("A_NEWER_HUBS_REASON") == ERROR_REASON_UNSPECIFIED


def test_a_bare_string_reason_is_refused() -> None:
    with pytest.raises(TypeError):
        server_errors.NotFound("gone", reason="NOT_FOUND")  # type: ignore[arg-type]


def test_the_reason_sent_is_the_one_the_client_maps() -> None:
    sent = server_errors.NotFound("no such service", reason=ERROR_REASON_SERVICE_NOT_FOUND)
    assert sent.reason == "SERVICE_NOT_FOUND"
    assert server_errors.NotFound("gone").reason == "NOT_FOUND"

    status = to_status(sent)
    trailers = grpc.aio.Metadata(*status.trailing_metadata)
    call = grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), trailers, status.details)
    received = client_errors.from_rpc_error(call)
    assert isinstance(received, ServiceNotFound) and received.reason == "SERVICE_NOT_FOUND"
    assert client_errors.reason_value(received.reason) == ERROR_REASON_SERVICE_NOT_FOUND
    assert isinstance(received, ClientError)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(c) for c in found)) if found else found


def test_every_error_class_of_the_hub_defaults_to_an_enum_value() -> None:
    for module in pkgutil.walk_packages(hub_server.__path__, "hub_server."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    classes = _subclasses(server_errors.HubError) | {server_errors.HubError}
    assert len(classes) > 10
    for cls in classes:
        assert cls.default_reason in VALUES, cls
    assert server_errors.NotFound.default_reason == ERROR_REASON_NOT_FOUND


def _reason_sites(tree: ast.AST) -> set[int]:
    """The nodes that give or test a reason: ``reason=`` arguments, assignments to
    ``reason`` or ``default_reason``, comparisons with ``.reason``."""

    def names_reason(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
        return name in ("reason", "default_reason")

    sites: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            sites |= {id(k.value) for k in node.keywords if k.arg == "reason"}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(names_reason(t) for t in targets):
                sites.add(id(node.value))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(names_reason(o) for o in operands):
                sites |= {id(o) for o in operands}
    return sites


def test_no_reason_is_a_bare_string_literal() -> None:
    """A literal that spells a reason is allowed only where it means something else:
    a gRPC status code's name (the generic reasons share them) or why nothing was
    eligible (the cause sent with NO_ELIGIBLE_INSTANCE); never where a reason is
    given or tested."""
    other_meanings = {c.name for c in grpc.StatusCode} | {c.value for c in Ineligibility}
    offenders = []
    for path in sorted(
        p for d in ("hub_server", "hub_client", "hubctl") for p in ROOT.glob(f"{d}/**/*.py")
    ):
        tree = ast.parse(path.read_text(), str(path))
        sites = _reason_sites(tree)
        offenders += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and node.value in WIRE_NAMES
            and (id(node) in sites or node.value not in other_meanings)
        ]
    assert offenders == []
