"""The dashboard end to end: headless Chromium (Debian's package, driven by
playwright-core through tests/ui/driver.mjs) against a live hub. The page is
opened once per test and never reloaded: everything it shows after that comes
from the hub's change feed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aitrading.hub.v1 import circuit_pb2, observability_pb2, observability_pb2_grpc

from hub_client import HubClient, health_check
from hub_server.app import Hub
from hub_server.auth.authorizer import Authorizer
from hub_server.auth.credentials import Identity, token_entry
from hub_server.auth.roles import Role
from hub_server.circuits.breaker import CircuitState
from hub_server.kernel.errors import PermissionDenied
from hub_server.ui import Dashboard
from hub_server.ui.actions import check_fleet_reader
from tests.support.ads import ads_stream
from tests.support.fleet import fleet
from tests.support.hubs import HubFactory
from tests.support.servers import GrpcServer, HttpServer

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "ui" / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The README's picture: refreshed by `UPDATE_SCREENSHOT=1 pytest tests/test_ui.py`
# (or when missing), so that test runs leave the work tree as they found it.
SCREENSHOT = ROOT / "docs" / "dashboard.png"
FAST = dict(interval=0.2, timeout=0.5)


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is missing"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is missing (npm ci)"
    return ""


class Browser:
    """One headless Chromium, steered line by line (see tests/ui/driver.mjs)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._ids = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls) -> Browser:
        proc = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), cwd=ROOT, env={**os.environ, "CHROMIUM": CHROMIUM},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        browser = cls(proc)
        await browser._answer(0, 60)
        return browser

    async def _answer(self, want: int, timeout: float) -> Any:
        assert self._proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            except TimeoutError:
                raise AssertionError(f"the browser driver did not answer in {timeout}s") from None
            if not line:
                stderr = b""
                if self._proc.stderr is not None:
                    stderr = await self._proc.stderr.read()
                raise AssertionError(f"the browser driver exited: {stderr.decode()[-2000:]}")
            answer = json.loads(line)
            if answer["id"] != want:
                continue
            if not answer["ok"]:
                raise AssertionError(answer["error"])
            return answer.get("value")

    async def call(self, op: str, **args: Any) -> Any:
        try:
            return await self._call(op, **args)
        except AssertionError as e:
            if op in ("open", "evaluate", "problems"):
                raise
            # What the page showed, to tell why it was not what the test wanted.
            shown = await self._call(
                "evaluate", expression="document.body.innerText.slice(0, 4000)"
            )
            raise AssertionError(f"{e}\n--- the page showed ---\n{shown}") from None

    async def _call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            self._ids += 1
            assert self._proc.stdin is not None
            command = {"id": self._ids, "op": op, **args}
            if "timeout" in args:
                command["timeout"] = int(args["timeout"] * 1000)
            self._proc.stdin.write((json.dumps(command) + "\n").encode())
            await self._proc.stdin.drain()
            return await self._answer(self._ids, args.get("timeout", 15) + 30)

    async def wait(self, selector: str, text: str = "", timeout: float = 15) -> str:
        return str(await self.call("wait", selector=selector, text=text, timeout=timeout))

    async def gone(self, selector: str, text: str = "", timeout: float = 15) -> None:
        await self.call("gone", selector=selector, text=text, timeout=timeout)

    async def text(self, selector: str) -> str:
        return str(await self.call("text", selector=selector))

    async def count(self, selector: str) -> int:
        return int(await self.call("count", selector=selector))

    async def click(self, selector: str, text: str = "") -> None:
        await self.call("click", selector=selector, text=text)

    async def fill(self, selector: str, value: str) -> None:
        await self.call("fill", selector=selector, value=value)

    async def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 15)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


class Page:
    """The dashboard open in the browser."""

    def __init__(self, browser: Browser) -> None:
        self.b = browser

    async def open(self, hub: Hub) -> None:
        assert hub.dashboard is not None
        await self.b.call("open", url=hub.dashboard.url)
        # Marks this document: were the page ever reloaded, the mark would be gone.
        await self.b.call("evaluate", expression="window.__opened = 1")

    async def live(self) -> None:
        await self.b.wait('#live[data-state="live"]')

    async def assert_not_reloaded_and_clean(self) -> None:
        assert await self.b.call("evaluate", expression="window.__opened") == 1
        problems = await self.b.call("problems")
        # A refused action or section is shown on the page; the browser also
        # logs the failed fetch, which is expected, not a fault of the page.
        assert [p for p in problems if "status of 40" not in p] == []


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run: {missing}")
        pytest.skip(f"browser tests need {missing}")
    b = await Browser.start()
    yield b
    await b.close()


@pytest.fixture
async def page(browser: Browser) -> Page:
    return Page(browser)


@pytest.fixture
async def ui_hub(hub_factory: HubFactory) -> Hub:
    return await hub_factory(ui_listen="127.0.0.1:0", alert_interval=0.2)


@pytest.fixture
async def ui_client(ui_hub: Hub) -> AsyncIterator[HubClient]:
    async with HubClient(ui_hub.address) as c:
        yield c


def row(instance_id: str, status: str = "") -> str:
    found = f'tr.instance[data-instance="{instance_id}"]'
    return f'{found}[data-status="{status}"]' if status else found


# -- scenarios -------------------------------------------------------------------


async def test_an_instance_appears_and_turns_unhealthy_when_its_server_stops(
    ui_hub: Hub, ui_client: HubClient, page: Page
) -> None:
    await page.open(ui_hub)
    await page.live()
    await page.b.wait("#services .empty", "No service is registered")
    http = HttpServer()
    await http.start()
    try:
        await ui_client.register(
            "pricing", instance_id="pricing-1", host="127.0.0.1", port=http.port,
            version="1.4.0", health=health_check(http="/health", **FAST),
        )  # fmt: skip
        text = await page.b.wait(row("pricing-1", "HEALTHY"))
        assert "1.4.0" in text and f"127.0.0.1:{http.port}" in text and "ms" in text
        assert "1 healthy" in await page.b.text('article.service[data-service="pricing"] header')
        await http.stop()
        await page.b.wait(row("pricing-1", "UNHEALTHY"))
        assert (await page.b.text('[data-tile="unhealthy"] .value')).strip() == "1"
    finally:
        await http.stop()
    await page.assert_not_reloaded_and_clean()


async def test_an_alert_appears_and_resolves(ui_hub: Hub, ui_client: HubClient, page: Page) -> None:
    await page.open(ui_hub)
    await page.live()
    await page.b.wait("#alerts-active", "All clear")
    grpc_server = GrpcServer()
    await grpc_server.start()
    try:
        await ui_client.register(
            "risk", instance_id="risk-1", host="127.0.0.1", port=grpc_server.port,
            protocol="grpc", health=health_check(grpc_service="", **FAST),
        )  # fmt: skip
        await page.b.wait(row("risk-1", "HEALTHY"))
        await grpc_server.set_serving(False)
        raised = await page.b.wait('#alerts-active li.alert[data-rule="INSTANCE_DOWN"]')
        assert "risk/risk-1 is unhealthy" in raised and "CRITICAL" in raised
        await page.b.wait('#alerts-active li.alert[data-rule="SERVICE_DOWN"]')
        await page.b.wait('#alerts-history tr.raised[data-rule="INSTANCE_DOWN"]')
        await grpc_server.set_serving(True)
        await page.b.gone("#alerts-active li.alert")
        await page.b.wait("#alerts-active", "All clear")
        resolved = await page.b.wait('#alerts-history tr.resolved[data-rule="INSTANCE_DOWN"]')
        assert "RESOLVED" in resolved and "after" in resolved
    finally:
        await grpc_server.stop()
    await page.assert_not_reloaded_and_clean()


async def test_a_deployments_progress_advances(
    ui_hub: Hub, ui_client: HubClient, page: Page
) -> None:
    async with fleet(ui_client, "quotes", 2) as f:
        gate = asyncio.Semaphore(0)  # one replacement per release

        async def held(directive: Any) -> None:
            await gate.acquire()

        f.before_replace = held
        await page.open(ui_hub)
        await page.live()
        d = await ui_client.deploy("quotes", "2.0.0", batch_size=1, health_gate_timeout=60)
        card = f'article.deployment[data-id="{d.id}"]'
        await page.b.wait(card, "quotes")
        await page.b.wait(f"{card} .progress", "batch 1 of 2")
        await page.b.wait(f"{card} .progress", "0 of 2 replaced")
        await page.b.wait('tr.instance[data-instance="quotes-old-00"][data-draining="true"]')
        gate.release()
        await page.b.wait(f"{card} .progress", "batch 2 of 2", timeout=30)
        await page.b.wait(f"{card} .progress", "1 of 2 replaced")
        await page.b.wait('tr.instance[data-instance="quotes-old-01"][data-draining="true"]')
        gate.release()
        await page.b.wait(f'{card}[data-state="SUCCEEDED"]', timeout=30)
        await page.b.wait(f"{card} .progress", "2 of 2 replaced")
        assert await page.b.count(f"{card} li.batch.done") == 2
    await page.assert_not_reloaded_and_clean()


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(
        token_entry("ops", Role.ADMIN, "admin-secret")
        + token_entry("dash", Role.READER, "reader-secret")
    )
    return path


async def test_a_reader_cannot_act_and_an_admin_can(
    hub_factory: HubFactory, credentials: Path, page: Page
) -> None:
    hub = await hub_factory(ui_listen="127.0.0.1:0", credentials_file=credentials)
    async with HubClient(hub.address, token="admin-secret") as admin:
        await admin.register("ledger", instance_id="ledger-1", host="127.0.0.1", port=9)
        await page.open(hub)
        # Without a token this hub shows nothing, like its gRPC API.
        await page.b.wait('#live[data-state="denied"]')
        await page.b.wait("#services .error", "401 UNAUTHENTICATED")

        await page.b.fill("#token", "reader-secret")
        await page.b.click('#token-form button[type="submit"]')
        await page.live()
        await page.b.wait("#whoami", "token:dash · reader")
        open_button = 'tr.circuit[data-service="ledger"][data-instance=""] button.action'
        await page.b.click(open_button, "Open")
        refused = await page.b.wait('#toast.error[data-status="403"]')
        assert "PERMISSION_DENIED" in refused and "token:dash" in refused
        assert hub.services.circuits.get("ledger").circuit.state is CircuitState.CLOSED

        await page.b.fill("#token", "admin-secret")
        await page.b.click('#token-form button[type="submit"]')
        await page.b.wait("#whoami", "token:ops · admin")
        await page.b.click(open_button, "Open")
        await page.b.wait('#toast.ok[data-status="200"]', "Open: done")
        await page.b.wait('tr.circuit[data-service="ledger"][data-state="FORCED_OPEN"]')
        assert hub.services.circuits.get("ledger").circuit.state is CircuitState.FORCED_OPEN

        # Both attempts are in the audit trail, with who made them; the page shows it.
        events, _ = await hub.services.audit.latest(method="OverrideCircuit")
        assert [(e.caller, e.outcome) for e in events] == [
            ("token:ops", "OK"),
            ("token:dash", "PERMISSION_DENIED"),
        ]
        assert events[0].target == "circuit/ledger/*"
        assert (events[0].version_before, events[0].version_after) == ("CLOSED", "FORCED_OPEN")
        assert events[0].details["via"] == "dashboard"
        await page.b.wait('#audit tr.audit[data-outcome="PERMISSION_DENIED"]', "OverrideCircuit")
        await page.assert_not_reloaded_and_clean()


async def test_actions_from_the_page_without_credentials_and_the_screenshot(
    ui_hub: Hub, ui_client: HubClient, page: Page, tmp_path: Path
) -> None:
    """A hub without credentials (loopback only) takes the page's actions as the
    anonymous admin. Also fills a small fleet and writes docs/dashboard.png."""
    servers: list[HttpServer] = []
    try:
        async with fleet(ui_client, "orders", 3) as f:
            f.replace = False  # the deployment stays in its first batch
            await _populate(ui_client, servers)
            d = await ui_client.deploy("orders", "2.1.0", batch_size=1, health_gate_timeout=600)
            await page.open(ui_hub)
            await page.live()
            card = f'article.deployment[data-id="{d.id}"]'
            await page.b.wait(f'{card}[data-state="RUNNING"]')
            await page.b.wait(row("md-3", "UNHEALTHY"), timeout=20)
            await page.b.wait(row("md-2", "DEGRADED"), timeout=20)
            await page.b.wait('#alerts-active li.alert[data-rule="INSTANCE_DOWN"]')
            await page.b.wait('tr.circuit[data-service="execution"][data-state="OPEN"]')
            await page.b.wait('tr.tenant[data-tenant="acme"]', "PRO")
            await page.b.wait("#errors tr.pattern", "ConnectionResetError")
            shot = tmp_path / "dashboard.png"
            await page.b.call("screenshot", path=str(shot), fullPage=True)
            assert shot.stat().st_size > 20_000
            if os.environ.get("UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)

            # A tenant's merged config, and the audit trail filtered by method.
            await page.b.click('button[data-toggle-config="acme"]')
            config = await page.b.wait("#tenants tr.config pre")
            assert '"websocketConnections": 50' in config
            await page.b.fill('#audit-filter input[name="method"]', "CreateTenant")
            await page.b.gone('#audit tr.audit:not([data-method$="/CreateTenant"])')
            assert await page.b.count("#audit tr.audit") == 3

            await page.b.click(f"{card} button.action", "Pause")
            await page.b.wait('#toast.ok[data-status="200"]', "Pause: done")
            await page.b.wait(f'{card}[data-state="PAUSED"]')
            await page.b.click(f"{card} button.action", "Resume")
            await page.b.wait(f'{card}[data-state="RUNNING"]')
            await page.b.click(f"{card} button.action", "Abort")
            await page.b.wait(f'{card}[data-state="ABORTED"]')
            events, _ = await ui_hub.services.audit.latest(method="PauseDeployment")
            assert events[0].caller == "anonymous" and events[0].outcome == "OK"
    finally:
        for s in servers:
            await s.stop()
    await page.assert_not_reloaded_and_clean()


async def _populate(client: HubClient, servers: list[HttpServer]) -> None:
    """A few services in every state, a circuit that opened, tenants using their
    quotas, and error patterns: what the README's screenshot shows."""
    for k, (status, delay) in enumerate([(200, 0.0), (200, 0.0), (200, 1.2), (503, 0.0)]):
        s = HttpServer()
        s.status, s.delay = status, delay
        await s.start()
        servers.append(s)
        await client.register(
            "market-data", instance_id=f"md-{k}", host="127.0.0.1", port=s.port,
            version="3.2.0" if k else "3.1.4",
            health=health_check(http="/health", interval=0.3, timeout=2.0),
        )  # fmt: skip
    for k in range(2):
        await client.register(
            "execution", instance_id=f"exec-{k}", host="127.0.0.1", port=9100 + k, version="5.0.1"
        )
        await client.report_load("execution", f"exec-{k}", 0.35 + 0.5 * k)
    await client.report_load("orders", "orders-old-00", 0.62)
    await client.circuit_stub.ReportOutcomes(
        circuit_pb2.ReportOutcomesRequest(
            outcomes=[
                circuit_pb2.CallOutcome(
                    service="execution",
                    outcome=circuit_pb2.OUTCOME_FAILURE if n % 3 else circuit_pb2.OUTCOME_SUCCESS,
                    latency_ms=40 + n,
                )
                for n in range(30)
            ]
        )
    )
    await client.create_tenant("acme", tier="pro", display_name="Acme Capital")
    await client.create_tenant("globex", tier="enterprise", display_name="Globex Trading")
    await client.create_tenant("initech", tier="free")
    for tenant, resource, amount in [
        ("initech", "websocket_connections", 4),
        ("initech", "api_calls_per_hour", 420),
        ("initech", "concurrent_requests", 9),
        ("acme", "websocket_connections", 30),
        ("acme", "data_storage_mb", 300),
        ("acme", "api_calls_per_hour", 2600),
        ("globex", "concurrent_requests", 120),
        ("globex", "api_calls_per_hour", 18000),
    ]:
        await client.allocate(resource, amount, tenant=tenant)
    now = time.time()
    patterns = []
    for n, (category, kind, message) in enumerate(
        [
            ("connection", "ConnectionResetError", "connection reset by peer <ip>:<port>"),
            ("timeout", "TimeoutError", "upstream quote feed timed out after <n>ms"),
            ("validation", "ValueError", "order quantity must be positive"),
        ]
    ):
        p = observability_pb2.ErrorPattern(
            fingerprint=f"{n + 10:08x}", tenant_id="acme" if n == 2 else "", category=category,
            severity="error", exception_type=kind, normalized_message=message,
            sample=message, count=[57, 23, 4][n],
        )  # fmt: skip
        p.first_seen.FromSeconds(int(now) - 3600)
        p.last_seen.FromSeconds(int(now) - 30 * n)
        patterns.append(p)
    stub = observability_pb2_grpc.ObservabilityServiceStub(client.channel)
    await stub.ReportErrors(
        observability_pb2.ReportErrorsRequest(service="execution", patterns=patterns)
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),  # DNS rebinding
        ({"Origin": "http://evil.example"}, 403),  # cross-site post
        ({"Content-Type": "text/plain"}, 415),  # a form post with no preflight
    ],
)
async def test_the_dashboard_refuses_cross_site_requests(
    ui_hub: Hub, headers: dict[str, str], status: int
) -> None:
    import urllib.error
    import urllib.request

    assert ui_hub.dashboard is not None
    url = ui_hub.dashboard.url + "api/actions/CircuitBreakerService/OverrideCircuit"
    body = b'{"service": "x", "action": "CIRCUIT_OVERRIDE_FORCE_OPEN"}'
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )

    def send() -> int:
        try:
            with urllib.request.urlopen(request) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert await asyncio.to_thread(send) == status
    assert ui_hub.services.circuits.get("x").circuit.state is CircuitState.CLOSED


async def test_release_deployment_drains_from_the_dashboard(
    ui_hub: Hub, ui_client: HubClient
) -> None:
    """The action the deployment card's "Release drains" button posts."""
    import urllib.request

    from tests.support.waiting import eventually

    assert ui_hub.dashboard is not None
    async with fleet(ui_client, "feeds", 2) as f:
        f.replace = False  # the first batch stays drained
        d = await ui_client.deploy("feeds", "2.0.0", batch_size=1, health_gate_timeout=60)
        await eventually(lambda: ui_hub.services.deployments.is_draining("feeds", "feeds-old-00"))
        request = urllib.request.Request(
            ui_hub.dashboard.url + "api/actions/DeploymentService/ReleaseDeploymentDrains",
            data=json.dumps({"id": d.id, "reason": "from the card"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )

        def send() -> tuple[int, Any]:
            with urllib.request.urlopen(request) as r:
                return int(r.status), json.loads(r.read())

        status, body = await asyncio.to_thread(send)
        assert status == 200
        assert body["releasedInstanceIds"] == ["feeds-old-00"]
        assert body["deployment"]["id"] == d.id
        assert not ui_hub.services.deployments.is_draining("feeds", "feeds-old-00")
        events, _ = await ui_hub.services.audit.latest(method="ReleaseDeploymentDrains")
        assert [(e.caller, e.outcome, e.target) for e in events] == [
            ("anonymous", "OK", f"deployment/{d.id}")
        ]
        assert events[0].details["via"] == "dashboard"
        assert events[0].details["reason"] == "from the card"
        await ui_client.abort_deployment(d.id)


def test_the_dashboard_stays_on_loopback_without_credentials(tmp_path: Path) -> None:
    services: Any = SimpleNamespace(authorizer=Authorizer(None))
    with pytest.raises(ValueError, match="without credentials"):
        Dashboard(services, "0.0.0.0:7080").check_exposure()
    for listen in ("127.0.0.1:7080", "[::1]:7080", ":7080", "7080", "localhost:7080"):
        Dashboard(services, listen).check_exposure()
    assert (Dashboard(services, "7080").host, Dashboard(services, "7080").port) == (
        "127.0.0.1",
        7080,
    )
    Dashboard(services, "0.0.0.0:7080", insecure=True).check_exposure()
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(token_entry("ops", Role.ADMIN, "admin-secret"))
    services = SimpleNamespace(authorizer=Authorizer(credentials))
    Dashboard(services, "0.0.0.0:7080").check_exposure()
    with pytest.raises(ValueError, match="HOST:PORT"):
        Dashboard(services, "127.0.0.1:http")


def test_a_tenant_bound_credential_may_not_use_the_dashboard() -> None:
    with pytest.raises(PermissionDenied, match="bound to tenant 'acme'"):
        check_fleet_reader(Identity("token:acme-dash", Role.READER, tenant="acme"))
    check_fleet_reader(Identity("token:dash", Role.READER))


async def test_the_overview_is_what_get_system_metrics_answers_tenants_included(
    ui_hub: Hub, ui_client: HubClient
) -> None:
    import urllib.request

    import grpc

    await ui_client.create_tenant("overview-acme", tier="pro")
    assert ui_hub.dashboard is not None
    url = ui_hub.dashboard.url + "api/overview"

    def fetch() -> Any:
        with urllib.request.urlopen(url) as r:
            return json.load(r)

    shown = (await asyncio.to_thread(fetch))["metrics"]
    async with grpc.aio.insecure_channel(ui_hub.address) as ch:
        answered = await observability_pb2_grpc.ObservabilityServiceStub(ch).GetSystemMetrics(
            observability_pb2.GetSystemMetricsRequest()
        )
    assert [t.tenant_id for t in answered.tenants] == [t["tenantId"] for t in shown["tenants"]]
    assert {"tenantId": "overview-acme", "tier": "pro"}.items() <= next(
        t for t in shown["tenants"] if t["tenantId"] == "overview-acme"
    ).items()


async def test_connected_xds_clients_and_their_nacks_are_listed(
    ui_hub: Hub, ui_client: HubClient, page: Page
) -> None:
    await ui_client.register("pricing", host="127.0.0.1", port=7001)
    await page.open(ui_hub)
    await page.live()
    await page.b.wait("#xds", "No xDS client is connected")
    async with (
        ads_stream(ui_hub, "checkout-1", tenant_id="acme", tier="pro"),
        ads_stream(ui_hub, "checkout-2", nack="cluster rejected by the client"),
    ):
        acked = await page.b.wait('#xds tr.xds-client[data-node="checkout-1"]', "v")
        assert "Cluster" in acked and "pricing" in acked and "acme" in acked and "PRO" in acked
        nacked = await page.b.wait('#xds tr.xds-client[data-node="checkout-2"]', "NACK")
        assert "cluster rejected by the client" in nacked
    await page.b.gone("#xds tr.xds-client")
    await page.b.wait("#xds", "No xDS client is connected")
    await page.assert_not_reloaded_and_clean()
