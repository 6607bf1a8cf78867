"""`central-hub serve`'s settings from flags, environment and a TOML file:
precedence, errors naming the setting and its source, `config show`, and hubs
started from a file (and the environment) alone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hub_client import HubClient
from hub_server.cli import build_parser
from hub_server.embedded_etcd import free_port
from hub_server.serve_settings import ENV_PREFIX, MASK, ServeSettings, SettingsError, load
from hub_server.store.etcd import EtcdStore
from hub_server.store.keys import ROOT
from tests.support.waiting import eventually

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _no_hub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the variables they mean; none leaks in from the machine."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _load(*argv: str) -> tuple[ServeSettings, dict[str, str]]:
    effective = load(build_parser().parse_args(["serve", *argv]))
    return effective.settings, dict(effective.sources)


# (in the file, in the environment, as a flag) -> the value and source that win
PRECEDENCE = [
    ((False, False, False), (1, "default")),
    ((True, False, False), (2, "file")),
    ((False, True, False), (3, "environment CENTRAL_HUB_WORKERS")),
    ((True, True, False), (3, "environment CENTRAL_HUB_WORKERS")),
    ((False, False, True), (4, "flag --workers")),
    ((True, False, True), (4, "flag --workers")),
    ((False, True, True), (4, "flag --workers")),
    ((True, True, True), (4, "flag --workers")),
]


@pytest.mark.parametrize(("given", "wins"), PRECEDENCE)
def test_a_flag_beats_the_environment_beats_the_file_beats_the_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given: tuple[bool, bool, bool],
    wins: tuple[int, str],
) -> None:
    in_file, in_env, as_flag = given
    config = tmp_path / "hub.toml"
    config.write_text('workers = 2\nlisten = "0.0.0.0:7100"\n' if in_file else "")
    if in_env:
        monkeypatch.setenv("CENTRAL_HUB_WORKERS", "3")
    argv = ["--config", str(config), *(["--workers", "4"] if as_flag else [])]
    settings, sources = _load(*argv)
    value, source = wins
    assert settings.workers == value
    assert sources["workers"] == (f"file {config}" if source == "file" else source)
    # Other settings keep their own source.
    assert sources["listen"] == (f"file {config}" if in_file else "default")


def test_the_config_file_can_be_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named, flagged = tmp_path / "env.toml", tmp_path / "flag.toml"
    named.write_text("backup_keep = 3\n")
    flagged.write_text("backup_keep = 5\n")
    monkeypatch.setenv("CENTRAL_HUB_CONFIG", str(named))
    assert _load()[0].backup_keep == 3
    assert _load("--config", str(flagged))[0].backup_keep == 5  # the flag names another


def test_lists_paths_and_booleans_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('etcd_endpoints = ["a:1", "b:2"]\ninsecure = true\nbackup_dir = "bk"\n')
    settings, _ = _load("--config", str(config))
    assert (settings.etcd_endpoints, settings.insecure) == (["a:1", "b:2"], True)
    assert settings.backup_dir == Path("bk")
    monkeypatch.setenv("CENTRAL_HUB_ETCD_ENDPOINTS", "c:3, d:4")
    monkeypatch.setenv("CENTRAL_HUB_INSECURE", "false")
    settings, _ = _load("--config", str(config))
    assert (settings.etcd_endpoints, settings.insecure) == (["c:3", "d:4"], False)
    settings, _ = _load("--config", str(config), "--etcd-endpoints", "e:5", "--insecure")
    assert (settings.etcd_endpoints, settings.insecure) == (["e:5"], True)


# setting, a bad value, the words of its error
BAD = [
    ("workers", "0", "greater than or equal to 1"),
    ("listen", "nope", "expected HOST:PORT"),
    ("log_level", "loud", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ("caller_rate_limit", "fast", "valid number"),
    ("etcd_client_port", "70000", "less than or equal to 65535"),
]


@pytest.mark.parametrize("where", ["file", "environment", "flag"])
@pytest.mark.parametrize(("name", "bad", "words"), BAD)
def test_a_bad_value_is_refused_naming_the_setting_and_its_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    name: str,
    bad: str,
    words: str,
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(f"{name} = {bad!r}\n".replace("'", '"') if where == "file" else "")
    if where == "environment":
        monkeypatch.setenv(f"CENTRAL_HUB_{name.upper()}", bad)
    flag = f"--{name.replace('_', '-')}"
    argv = ["--config", str(config), *([flag, bad] if where == "flag" else [])]
    with pytest.raises(SettingsError) as refused:
        _load(*argv)
    source = {
        "file": f"file {config}",
        "environment": f"environment CENTRAL_HUB_{name.upper()}",
        "flag": f"flag {flag}",
    }[where]
    assert str(refused.value).startswith(f"{name} (from {source}): {bad!r}: "), refused.value
    assert words in str(refused.value)


def test_a_bad_value_is_refused_even_when_a_higher_source_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A typo in a variable is an error wherever the flag happens to win today.
    monkeypatch.setenv("CENTRAL_HUB_WORKERS", "two")
    with pytest.raises(SettingsError, match=r"^workers \(from environment CENTRAL_HUB_WORKERS\)"):
        _load("--workers", "2")


def test_an_unknown_or_misspelt_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('lisen = "0.0.0.0:7000"\n[serve]\nworkers = 2\n')
    with pytest.raises(SettingsError) as refused:
        _load("--config", str(config))
    lines = str(refused.value).splitlines()
    assert f"unknown setting 'lisen' in file {config} (did you mean 'listen'?)" in lines
    assert f"unknown setting 'serve' in file {config}" in lines  # no far-fetched guess


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        _load("--config", str(tmp_path / "absent.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(SettingsError, match=f"config file {broken}: .*line 1"):
        _load("--config", str(broken))


def test_settings_that_do_not_go_together_name_both_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('metrics_listen = "127.0.0.1:9100"\n')
    monkeypatch.setenv("CENTRAL_HUB_WORKERS", "2")
    with pytest.raises(SettingsError) as refused:
        _load("--config", str(config))
    assert str(refused.value) == (
        f"metrics_listen (from file {config}) serves one process, not workers "
        "(from environment CENTRAL_HUB_WORKERS); use otlp_endpoint"
    )
    with pytest.raises(SettingsError, match=r"etcd_client_port \(from flag --etcd-client-port\) "
                       r"does not apply to an external etcd"):  # fmt: skip
        _load("--etcd-endpoints", "127.0.0.1:2379", "--etcd-client-port", "2379")
    with pytest.raises(SettingsError, match=r"etcd_cacert .* does not apply to the embedded etcd"):
        _load("--etcd-cacert", str(config))
    with pytest.raises(SettingsError, match=r"etcd_user .* needs etcd_password_file"):
        _load("--etcd-endpoints", "127.0.0.1:2379", "--etcd-user", "hub")
    # The error names the password setting that was given, with its own source.
    monkeypatch.setenv("CENTRAL_HUB_ETCD_PASSWORD", "secret")
    with pytest.raises(SettingsError, match=r"etcd_password \(from environment "
                       r"CENTRAL_HUB_ETCD_PASSWORD\): needs etcd_user"):  # fmt: skip
        _load("--etcd-endpoints", "127.0.0.1:2379")


def _show(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "central-hub"), "config", "show", *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_config_show_prints_each_value_with_its_source_and_masks_secrets(tmp_path: Path) -> None:
    password_file = tmp_path / "etcd.password"
    password_file.write_text("file-secret\n")
    config = tmp_path / "hub.toml"
    config.write_text(
        'listen = "0.0.0.0:7100"\netcd_endpoints = ["10.0.0.1:2379"]\n'
        'etcd_user = "hub"\netcd_password = "toml-secret"\n'
        f'credentials_file = "{tmp_path / "creds.toml"}"\n'
    )
    (tmp_path / "creds.toml").write_text("")
    done = _show(
        "--config", str(config), "--hub-id", "hub-a",
        env={"CENTRAL_HUB_LOG_LEVEL": "debug", "CENTRAL_HUB_ETCD_PASSWORD": "env-secret"},
    )  # fmt: skip
    # The secret from the environment beats the file's, and neither is shown.
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout
    shown = tomllib.loads(done.stdout)  # a usable configuration file
    assert shown["etcd_password"] == MASK
    assert shown["listen"] == "0.0.0.0:7100" and shown["log_level"] == "DEBUG"
    assert "backup_dir" not in shown  # not set: commented out
    lines = {line.removeprefix("# ").split(" ")[0]: line for line in done.stdout.splitlines()}
    assert lines["listen"].endswith(f"# file {config}")
    assert lines["etcd_password"].endswith("# environment CENTRAL_HUB_ETCD_PASSWORD")
    assert lines["log_level"].endswith("# environment CENTRAL_HUB_LOG_LEVEL")
    assert lines["hub_id"].endswith("# flag --hub-id")
    assert lines["workers"].endswith("# default")
    # Every setting is listed, once.
    assert sorted(n for n in lines if n in ServeSettings.model_fields) == sorted(
        ServeSettings.model_fields
    )

    # A password file's content is never shown either; a password as a flag is refused.
    done = _show(
        "--etcd-endpoints", "10.0.0.1:2379", "--etcd-user", "hub",
        "--etcd-password-file", str(password_file),
    )  # fmt: skip
    assert done.returncode == 0 and "file-secret" not in done.stdout
    done = _show("--etcd-password", "cli-secret")
    assert done.returncode == 2 and "cli-secret" not in done.stderr
    assert "etcd_password (from flag --etcd-password): not accepted on the command line" in (
        done.stderr
    )


async def test_a_bad_environment_stops_serve_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "central-hub"), "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CENTRAL_HUB_BACKUP_KEEP": "none", "CENTRAL_HUB_LISTEN": "x"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert sorted(proc.stderr.splitlines()) == [
        "central-hub: backup_keep (from environment CENTRAL_HUB_BACKUP_KEEP): 'none': "
        "Input should be a valid integer, unable to parse string as an integer",
        "central-hub: listen (from environment CENTRAL_HUB_LISTEN): 'x': expected HOST:PORT",
    ]
    assert not data_dir.exists()  # no etcd was started


def _etcd_cmdlines(client_address: str) -> list[bytes]:
    """The command lines of the etcd processes serving ``client_address``."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = path.read_bytes()
        except OSError:  # the process has gone
            continue
        if b"member-data" in cmdline and client_address.encode() in cmdline:
            found.append(cmdline)
    return found


class _Hub:
    """`central-hub serve` started with no flag but what the test gives."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *argv: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(BIN / "central-hub"), "serve", *argv, cwd=cwd, env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def output(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await self.proc.stdout.read()).decode(errors="replace")


@pytest.fixture
async def hub_process() -> AsyncIterator[_Hub]:
    hub = _Hub()
    yield hub
    if hub.proc is not None and hub.proc.returncode is None:
        hub.proc.kill()
        await hub.proc.wait()


async def _answers(address: str) -> bool:
    try:
        async with HubClient(address, timeout=1) as client:
            await client.cluster_status()
            return True
    except Exception:
        return False


async def test_a_hub_started_from_a_toml_file_alone_serves_with_its_settings(
    tmp_path: Path, hub_process: _Hub
) -> None:
    grpc_port, ui_port, client_port, peer_port = (free_port() for _ in range(4))
    (tmp_path / "hub.toml").write_text(
        f'listen = "127.0.0.1:{grpc_port}"\n'
        'data_dir = "state"\n'  # relative to the working directory
        'hub_id = "from-file"\n'
        f'ui_listen = "127.0.0.1:{ui_port}"\n'
        f"etcd_client_port = {client_port}\n"
        f"etcd_peer_port = {peer_port}\n"
        'log_format = "json"\n'
    )
    await hub_process.start(cwd=tmp_path, env={"CENTRAL_HUB_CONFIG": "hub.toml"})
    address = f"127.0.0.1:{grpc_port}"
    await eventually(lambda: _answers(address), timeout=30)
    async with HubClient(address) as client:
        status = await client.cluster_status()
        assert status.hub_id == "from-file"
        await client.register("fx", host="h", port=1, ttl=60)
        # The embedded etcd is on the pinned client port, its data where the file said.
        store = EtcdStore([f"127.0.0.1:{client_port}"])
        try:
            kvs, _ = await store.get_prefix(ROOT + b"registry/fx/")
            assert [kv.key for kv in kvs] == [ROOT + b"registry/fx/h-1"]
        finally:
            await store.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{ui_port}/") as resp:
            assert resp.status == 200  # the dashboard, on the file's port
    assert (tmp_path / "state" / "etcd" / "member-data").is_dir()
    etcd_cmdlines = _etcd_cmdlines(f"127.0.0.1:{client_port}")
    assert etcd_cmdlines and f"127.0.0.1:{peer_port}".encode() in etcd_cmdlines[0]
    assert await hub_process.stop() == 0
    assert '"message"' in await hub_process.output()  # log_format = "json"


async def test_workers_run_with_the_settings_from_file_and_environment(
    tmp_path: Path, hub_process: _Hub
) -> None:
    port = free_port()
    (tmp_path / "hub.toml").write_text(f'listen = "127.0.0.1:{port}"\nhub_id = "filed"\n')
    # The workers get every setting as flags: CENTRAL_HUB_WORKERS in their
    # environment would otherwise make each of them a supervisor too.
    await hub_process.start(
        "--config", "hub.toml", cwd=tmp_path,
        env={"CENTRAL_HUB_WORKERS": "2", "CENTRAL_HUB_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    address = f"127.0.0.1:{port}"

    async def both_workers() -> bool:
        if not await _answers(address):
            return False
        async with HubClient(address, timeout=2) as client:
            status = await client.cluster_status()
        return sorted(r.hub_id for r in status.replicas) == ["filed-w0", "filed-w1"]

    await eventually(both_workers, timeout=60)
    assert await hub_process.stop() == 0
