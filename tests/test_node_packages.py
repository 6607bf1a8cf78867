"""The Node and TypeScript packages (clients/node: @aitrading/central-hub-stubs and
@aitrading/central-hub-client) as a team installs them: packed once, installed
from the tarballs into a scratch folder offline, then run against a live hub
over connect-node (ES modules) and grpc-js (CommonJS), with the watch's resume
and resync logic on scripted streams beside them, and a TypeScript program
compiled with ``tsc --strict`` against them and run by node."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tomllib

import pytest

from hub_server.store.etcd import EtcdStore
from tests.support.commands import run
from tests.support.hubs import HubFactory
from tests.support.node_packages import ROOT, Installed, install

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return install(tmp_path_factory.mktemp("node-consumer"))


def _tap_counts(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", out, re.M)}


def test_packages_are_ready_to_publish(installed: Installed) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, tgz in installed.tarballs.items():
        with tarfile.open(tgz) as tar:
            files = set(tar.getnames())
            manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        assert manifest["name"] == name
        assert manifest["version"] == version, "keep the Node packages' version with pyproject's"
        assert manifest["license"] == "Apache-2.0"
        assert "package/README.md" in files
        for entry in (
            "index",
            *[
                k.removeprefix("./")
                for k in manifest["exports"]
                if k.count("/") == 1 and "*" not in k and k != "./package.json"
            ],
        ):
            for flavour in ("esm", "cjs"):
                assert f"package/dist/{flavour}/{entry}.js" in files, (name, entry, flavour)
                assert f"package/dist/{flavour}/{entry}.d.ts" in files, (name, entry, flavour)
        main = manifest["exports"]["."]
        assert main["import"]["types"].endswith(".d.ts") and main["require"]["default"].endswith(
            ".js"
        )
        assert not any("/src/" in f for f in files), "sources stay out of the tarball"


async def test_node_packages_against_live_hub(
    installed: Installed, hub_factory: HubFactory, etcd_store: EtcdStore
) -> None:
    # A revision the hub can no longer resume from, for the RESYNC check: etcd
    # compacted past it before the hub started.
    stale = await etcd_store.put(b"/node-test/marker", b"1")
    await etcd_store.compact(await etcd_store.put(b"/node-test/marker", b"2"))
    await etcd_store.delete(b"/node-test/", prefix=True)
    hub = await hub_factory()
    code, out = await run(
        "node",
        "--test",
        "--test-reporter=tap",
        "test/connect.test.mjs",
        "test/grpc-js.test.cjs",
        "test/resume.test.mjs",
        cwd=installed.folder,
        env={"HUB_ADDR": hub.address, "HUB_STALE_REVISION": str(stale)},
    )
    assert code == 0, f"node --test failed ({code}):\n{out}"
    counts = _tap_counts(out)
    assert counts.get("pass", 0) == 8, out
    assert counts.get("skipped") == counts.get("fail") == counts.get("cancelled") == 0, out


async def test_typescript_program_against_live_hub(
    installed: Installed, hub_factory: HubFactory
) -> None:
    hub = await hub_factory()
    project = installed.folder / "test" / "typescript"
    tsc = installed.folder / "node_modules" / ".bin" / "tsc"
    code, out = await run(str(tsc), "--strict", "-p", str(project), cwd=installed.folder)
    assert code == 0, f"tsc --strict failed ({code}):\n{out}"
    code, out = await run(
        "node",
        str(project / "dist" / "smoke.js"),
        cwd=installed.folder,
        env={"HUB_ADDR": hub.address},
    )
    assert code == 0, f"the compiled program failed ({code}):\n{out}"
    assert "typescript over connect: register, discover, watch, typed error OK" in out, out
    assert "typescript over grpc-js: register, discover, watch, typed error OK" in out, out
