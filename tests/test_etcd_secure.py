"""A hub against an etcd as production runs it: client TLS with client
certificates required, authentication on, and JWT tokens that expire every
2 seconds (tests/support/secure_etcd.py). The hub serves, registers and reads
through it, authenticates again as its token expires, and a wrong password, a
missing client certificate or a user without a role on the hub's prefix stop
`central-hub serve` at start with a clear message."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_client import HubClient
from hub_server.app import Hub
from hub_server.embedded_etcd import free_port
from tests.support.hubs import HubFactory
from tests.support.secure_etcd import HubLogin, SecureEtcd

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureEtcd, HubLogin]]:
    etcd = SecureEtcd(tmp_path_factory.mktemp("secure-etcd"), token_ttl="2s")
    etcd.start()
    try:
        login = etcd.enable_auth()
        yield etcd, login
    finally:
        etcd.stop()


def _flags(etcd: SecureEtcd, login: HubLogin, tmp_path: Path) -> list[str]:
    return [
        "--listen", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "data"),
        "--etcd-endpoints", etcd.endpoint,
        "--etcd-cacert", str(etcd.ca.cert),
        "--etcd-cert", str(etcd.hub_client.cert),
        "--etcd-key", str(etcd.hub_client.key),
        "--etcd-user", login.user,
        "--etcd-password-file", str(login.password_file),
    ]  # fmt: skip


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """central-hub's own error line (grpc's C core may log around it)."""
    [line] = [line for line in done.stderr.splitlines() if line.startswith("central-hub:")]
    return line


def _serve(*argv: str) -> subprocess.CompletedProcess[str]:
    """A `central-hub serve` expected to refuse to start."""
    return subprocess.run(
        [str(BIN / "central-hub"), "serve", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_hub_serves_registers_and_reads_through_tls_and_auth(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    etcd, login = secure_etcd
    flags = _flags(etcd, login, tmp_path)
    address = flags[1]
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "central-hub"), "serve", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.returncode is None, "central-hub exited"
            try:
                async with HubClient(address, timeout=1) as client:
                    await client.cluster_status()
                break
            except Exception:
                assert time.monotonic() < deadline, "the hub did not answer"
                await asyncio.sleep(0.2)
        async with HubClient(address) as client:
            await client.register("fx", host="h1", port=1, ttl=30)
            assert [i.instance_id for i in (await client.discover("fx", include_unhealthy=True))
                    .instances] == ["h1-1"]  # fmt: skip
            # Past the token's 2 s TTL: the hub must authenticate again to write.
            await asyncio.sleep(3)
            await client.register("fx", host="h2", port=1, ttl=30)
            service = await client.discover("fx", include_unhealthy=True)
            assert sorted(i.instance_id for i in service.instances) == ["h1-1", "h2-1"]
            # What the hub wrote is in etcd, under its prefix, for its user.
            listed = etcd.etcdctl("get", "--prefix", "--keys-only", "/hub/v1/registry/fx/")
            assert listed.stdout.split() == [
                "/hub/v1/registry/fx/h1-1",
                "/hub/v1/registry/fx/h2-1",
            ]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_the_hub_authenticates_again_whenever_its_token_expires(
    secure_etcd: tuple[SecureEtcd, HubLogin], hub_factory: HubFactory
) -> None:
    etcd, login = secure_etcd
    hub: Hub = await hub_factory(
        endpoints=[etcd.endpoint],
        etcd_cacert=etcd.ca.cert,
        etcd_cert=etcd.hub_client.cert,
        etcd_key=etcd.hub_client.key,
        etcd_user=login.user,
        etcd_password=login.password_file.read_text().strip(),
    )
    assert hub.store is not None and hub.store._token is not None
    first = hub.store._token.generation
    async with HubClient(hub.address) as client:
        for n in range(3):  # three writes, each past the last token's TTL
            await asyncio.sleep(2.5)
            await client.register("renewed", host=f"h{n}", port=1, ttl=30)
        service = await client.discover("renewed", include_unhealthy=True)
    assert len(service.instances) == 3  # the watch-fed view saw them all
    # However many renewals the hub's own traffic already made, there were some.
    assert hub.store._token.generation > first


def test_a_wrong_password_stops_serve_at_start(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    etcd, login = secure_etcd
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    flags = _flags(etcd, login, tmp_path)
    flags[flags.index("--etcd-password-file") + 1] = str(wrong)
    done = _serve(*flags)
    assert done.returncode == 2, done.stderr
    assert _said(done) == (
        "central-hub: etcd refused user 'hub': authentication failed, invalid user ID or password"
    )
    assert "not-the-password" not in done.stderr


def test_a_missing_client_certificate_stops_serve_at_start(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    etcd, login = secure_etcd
    flags = _flags(etcd, login, tmp_path)
    for flag in ("--etcd-cert", "--etcd-key"):
        i = flags.index(flag)
        del flags[i : i + 2]
    started = time.monotonic()
    done = _serve(*flags)
    assert done.returncode == 2, done.stderr
    [last] = [line for line in done.stderr.splitlines() if line.startswith("central-hub:")]
    assert last.startswith("central-hub: TLS handshake with etcd failed"), done.stderr
    assert "etcd refused the hub's client certificate: check etcd_cert and etcd_key" in last
    assert time.monotonic() - started < 25  # told at once, not after the 30 s wait for etcd


def test_a_user_without_a_role_on_the_hub_prefix_stops_serve_at_start(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    etcd, _ = secure_etcd
    etcd.etcdctl("user", "add", "stranger", "--new-user-password", "stranger-password")
    try:
        password = tmp_path / "stranger.password"
        password.write_text("stranger-password")
        done = _serve(*_flags(etcd, HubLogin("stranger", password), tmp_path))
        assert done.returncode == 2, done.stderr
        assert _said(done) == (
            "central-hub: etcd user 'stranger' may not read /hub/v1/: permission denied "
            "(grant its role readwrite on the hub's prefix)"
        )
    finally:
        etcd.etcdctl("user", "delete", "stranger")


def test_a_client_certificate_alone_is_the_user_of_its_cn(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    # etcd takes the certificate's CN (central-hub here, not a user) as the user.
    etcd, login = secure_etcd
    flags = _flags(etcd, login, tmp_path)
    for flag in ("--etcd-user", "--etcd-password-file"):
        i = flags.index(flag)
        del flags[i : i + 2]
    done = _serve(*flags)
    assert done.returncode == 2, done.stderr
    assert _said(done).startswith(
        "central-hub: etcd user of the client certificate may not read /hub/v1/: "
    )


def test_the_password_is_never_on_the_command_line_nor_shown(
    secure_etcd: tuple[SecureEtcd, HubLogin], tmp_path: Path
) -> None:
    etcd, login = secure_etcd
    shown = subprocess.run(
        [str(BIN / "central-hub"), "config", "show", *_flags(etcd, login, tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CENTRAL_HUB_ETCD_USER": "ignored-by-the-flag"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "hub-password" not in shown.stdout
    assert f'etcd_password_file = "{login.password_file}"  # flag' in shown.stdout
