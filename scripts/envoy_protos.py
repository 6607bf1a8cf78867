#!/usr/bin/env python3
"""Installs envoy's generated protos (the xDS data-plane API) for the hub's xDS
control plane, without what would break OTLP export.

PyPI's ``xds-protos`` is the generated envoy data-plane API for Python, but its
wheel also ships older copies of ``opentelemetry/proto`` and ``google/*`` modules;
installed as is, they overwrite ``opentelemetry-proto``'s and
``googleapis-common-protos``' files and the OTLP exporter then fails with
``cannot import name 'InstrumentationScope'``. So this builds a small local wheel,
``central-hub-envoy-protos``, of just the packages the hub uses from it (envoy,
xds, udpa, validate, cel, opencensus) and installs that one, from the wheelhouse
only (``--no-index``: the name is never looked up on an index).

Usage (stdlib only, so any python3 runs it):
  scripts/envoy_protos.py build [--wheelhouse DIR] [--python PY]
      download xds-protos (pip's cache serves repeats offline) and build the wheel
  scripts/envoy_protos.py install [--wheelhouse DIR] [--python PY]
      build, then install it into PY's environment (``make install`` does this)

A production install runs the same ``install`` with the server's interpreter, or
copies the wheelhouse and runs ``PY -m pip install --no-index --no-deps
<wheelhouse>/central_hub_envoy_protos-*.whl``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

XDS_PROTOS = "xds-protos"
XDS_PROTOS_VERSION = "1.85.0"  # the grpcio line the hub runs (pyproject)
NAME = "central-hub-envoy-protos"
DIST = "central_hub_envoy_protos"
# The packages taken from xds-protos; everything else in it (opentelemetry,
# google, test) is left out because other distributions own those names.
PACKAGES = ("envoy", "xds", "udpa", "validate", "cel", "opencensus")
DEFAULT_WHEELHOUSE = Path(__file__).resolve().parent.parent / "build" / "wheelhouse"


def wheel_name(version: str = XDS_PROTOS_VERSION) -> str:
    return f"{DIST}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def kept(name: str) -> bool:
    """Whether a path inside the xds-protos wheel goes into the local wheel."""
    return name.split("/", 1)[0] in PACKAGES and not name.endswith("/")


def build_wheel(source: Path, wheelhouse: Path, version: str = XDS_PROTOS_VERSION) -> Path:
    """Writes the local wheel of :data:`PACKAGES` from the xds-protos wheel
    ``source`` into ``wheelhouse``; returns its path."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    target = wheelhouse / wheel_name(version)
    info = f"{DIST}-{version}.dist-info"
    with zipfile.ZipFile(source) as src:
        requires = [
            line
            for line in src.read(f"xds_protos-{version}.dist-info/METADATA").decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        files = {name: src.read(name) for name in sorted(src.namelist()) if kept(name)}
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            f"Name: {NAME}",
            f"Version: {version}",
            f"Summary: envoy/xds/udpa/validate/cel/opencensus packages of {XDS_PROTOS} "
            f"{version}, without its opentelemetry and google copies",
            "License: Apache-2.0",
            *requires,
            "",
        ]
    )
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: central-hub scripts/envoy_protos.py\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/top_level.txt"] = ("\n".join(PACKAGES) + "\n").encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            # A fixed date: the same input gives the same wheel, byte for byte.
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(entry, data)
    partial.replace(target)
    return target


def source_wheel(wheelhouse: Path, python: str, version: str = XDS_PROTOS_VERSION) -> Path:
    """The xds-protos wheel, downloaded into the wheelhouse once (pip's cache
    serves a repeat without the network)."""
    found = sorted(wheelhouse.glob(f"xds_protos-{version}-*.whl"))
    if found:
        return found[-1]
    subprocess.run(
        [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(wheelhouse), f"{XDS_PROTOS}=={version}"],
        check=True,
    )  # fmt: skip
    found = sorted(wheelhouse.glob(f"xds_protos-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no {XDS_PROTOS} {version} wheel in {wheelhouse}")
    return found[-1]


def install(wheel: Path, python: str) -> None:
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall",
         str(wheel)],
        check=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "install"))
    parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    parser.add_argument(
        "--python", default=sys.executable, help="the environment to download with / install into"
    )
    args = parser.parse_args(argv)
    wheel = build_wheel(source_wheel(args.wheelhouse, args.python), args.wheelhouse)
    if args.command == "install":
        install(wheel, args.python)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
