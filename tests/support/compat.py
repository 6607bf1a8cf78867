"""Wire compatibility of the stubs a client has installed with the released API
baseline (api/baseline.binpb, a FileDescriptorSet): everything the baseline has
must still be there, under the same numbers and types. Only google.protobuf is
imported, so a fresh virtualenv with nothing but the client wheels runs it too.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

FieldType = descriptor_pb2.FieldDescriptorProto


def load_baseline(path: Path) -> descriptor_pb2.FileDescriptorSet:
    baseline = descriptor_pb2.FileDescriptorSet()
    baseline.ParseFromString(path.read_bytes())
    return baseline


def _import_stubs(proto_name: str) -> None:
    """Imports the generated module of a proto file (registering it in the pool)."""
    module = proto_name.removesuffix(".proto").replace("/", ".") + "_pb2"
    importlib.import_module(module)


def incompatibilities(
    baseline: descriptor_pb2.FileDescriptorSet, package_prefix: str = "aitrading."
) -> list[str]:
    """What the installed stubs lost or changed against the baseline: a missing
    message, field, enum value, service or method, or a field whose number, type
    or cardinality differs. Empty when a peer built on the baseline understands
    the installed stubs' messages and they understand its."""
    pool = descriptor_pool.Default()
    problems: list[str] = []
    for file in baseline.file:
        if not file.package.startswith(package_prefix):
            continue
        try:
            _import_stubs(file.name)
        except ImportError as e:
            problems.append(f"{file.name}: no generated module ({e})")
            continue
        prefix = file.package
        for message in file.message_type:
            problems += _message(pool, f"{prefix}.{message.name}", message)
        for enum in file.enum_type:
            problems += _enum(pool, f"{prefix}.{enum.name}", enum)
        for service in file.service:
            name = f"{prefix}.{service.name}"
            try:
                found = pool.FindServiceByName(name)
            except KeyError:
                problems.append(f"service {name} is gone")
                continue
            methods = {m.name: m for m in found.methods}
            for method in service.method:
                now = methods.get(method.name)
                if now is None:
                    problems.append(f"method {name}.{method.name} is gone")
                    continue
                if now.input_type.full_name != method.input_type.lstrip(
                    "."
                ) or now.output_type.full_name != method.output_type.lstrip("."):
                    problems.append(f"method {name}.{method.name} changed its types")
    return problems


def _message(pool: descriptor_pool.DescriptorPool, name: str, baseline: object) -> list[str]:
    try:
        found = pool.FindMessageTypeByName(name)
    except KeyError:
        return [f"message {name} is gone"]
    problems: list[str] = []
    by_number = {f.number: f for f in found.fields}
    for field in baseline.field:  # type: ignore[attr-defined]
        now = by_number.get(field.number)
        where = f"{name}.{field.name} (field {field.number})"
        if now is None:
            problems.append(f"{where} is gone")
            continue
        if now.type != field.type:
            problems.append(f"{where} changed type")
        elif field.type in (FieldType.TYPE_MESSAGE, FieldType.TYPE_ENUM) and (
            (now.message_type or now.enum_type).full_name != field.type_name.lstrip(".")
        ):
            problems.append(f"{where} changed type")
        # protobuf 7 has is_repeated only, older ones label only.
        repeated = getattr(now, "is_repeated", None)
        if repeated is None:
            repeated = now.label == FieldType.LABEL_REPEATED
        if (field.label == FieldType.LABEL_REPEATED) != repeated:
            problems.append(f"{where} changed cardinality")
    for nested in baseline.nested_type:  # type: ignore[attr-defined]
        if not nested.options.map_entry:
            problems += _message(pool, f"{name}.{nested.name}", nested)
    for enum in baseline.enum_type:  # type: ignore[attr-defined]
        problems += _enum(pool, f"{name}.{enum.name}", enum)
    return problems


def _enum(pool: descriptor_pool.DescriptorPool, name: str, baseline: object) -> list[str]:
    try:
        found = pool.FindEnumTypeByName(name)
    except KeyError:
        return [f"enum {name} is gone"]
    numbers = {v.number for v in found.values}
    return [
        f"{name}.{v.name} ({v.number}) is gone"
        for v in baseline.value  # type: ignore[attr-defined]
        if v.number not in numbers
    ]
