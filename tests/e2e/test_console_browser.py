"""The technician console in a real browser (Debian's headless chromium) against the demo's gate.

The gate is the one `smartgate demo` runs (`SimulatedGate`: virtual firmware and PLCs, a real
broker, the real daemon process) with the console on a free loopback port, a login and commands
allowed. With SMARTGATE_SCREENSHOTS=DIR the tests also save the screenshots of docs/console.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from argon2 import PasswordHasher

from gate_controller.demo.gate import SimulatedGate, plan_trucks
from tests.support.broker import BROKER_MARKS, MosquittoBroker, free_port, running_broker
from tests.support.browser import chromium, chromium_available
from tests.support.gate import daemon_log, simulated_gate

pytestmark = [
    *BROKER_MARKS,
    pytest.mark.slow,
    pytest.mark.skipif(not chromium_available(), reason="needs chromium (apt-get install chromium) and playwright"),
]

USER = "technician"
PASSWORD = "lane-booth-2026"
SHOTS = os.environ.get("SMARTGATE_SCREENSHOTS")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


def console_section(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "console-password").write_text(PasswordHasher().hash(PASSWORD) + "\n")
    return {"listen": f"127.0.0.1:{free_port()}", "allow_commands": True,
            "auth": {"username": USER, "password_hash_file": str(tmp_path / "console-password")}}


async def shot(page: Any, name: str) -> None:
    if SHOTS:  # playwright creates the directory
        await page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=False)


async def wait_console(base: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(*base.removeprefix("http://").rstrip("/").split(":"))
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def log_in(page: Any, base: str) -> None:
    await page.goto(base)
    assert page.url == f"{base}login"  # everything but the login page needs a session
    await page.fill("input[name=username]", USER)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form.login button")
    await page.wait_for_url(base)


async def until(page: Any, condition: str, timeout_s: float = 15.0) -> None:
    """Poll the alarms page (fetched by the browser, with its session) until ``condition`` on its text ``t``."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(f"fetch('/alarms').then(r => r.text()).then(t => {condition})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"alarms page: {condition} did not become true")
        await asyncio.sleep(0.3)


async def lane_status(gate: SimulatedGate, lane: str) -> dict[str, Any]:
    return await gate._lane_status(lane)


def test_overview_live_feed_and_preview_in_chromium(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_overview_live_feed_and_preview(tmp_path, broker))


async def _overview_live_feed_and_preview(tmp_path: Path, broker: MosquittoBroker) -> None:
    console = console_section(tmp_path)
    base = f"http://{console['listen']}/"
    async with simulated_gate(tmp_path / "gate", broker, console=console) as gate, chromium() as browser:
        await wait_console(base)
        page = await browser.new_page()
        await log_in(page, base)
        # The overview shows both lanes, each with its PLC points, refreshed in place.
        for lane in ("L1", "L2"):
            await page.wait_for_selector(f"#lane-{lane} .point.p-loop_entry", timeout=30_000)
        assert await page.locator("article.lane").count() == 2
        assert "Lane L1" in await page.inner_text("#lane-L1 h2")
        assert "Lane L2" in await page.inner_text("#lane-L2 h2")
        await shot(page, "overview")

        # The feed: a truck's transaction appears without a reload.
        await page.goto(f"{base}feed")
        await page.wait_for_selector("#feed-state.ok", timeout=15_000)  # the event stream is open
        await page.evaluate("window.__notReloaded = true")
        assert await page.locator("#feed-rows tr.tx").count() == 0
        trucks = plan_trucks(2, ["L1", "L2"], seed=5)
        drives = [asyncio.create_task(gate.drive_truck(gate.rigs[t.lane], t)) for t in trucks]
        try:
            await page.wait_for_selector("#feed-rows tr.tx", timeout=90_000)
        except Exception:
            raise AssertionError(f"no feed row appeared\n{daemon_log(gate)}") from None
        assert await page.evaluate("window.__notReloaded === true"), "the page was reloaded"
        await asyncio.gather(*drives)
        await page.wait_for_function("document.querySelectorAll('#feed-rows tr.tx').length >= 2", timeout=30_000)
        assert await page.evaluate("window.__notReloaded === true")
        row = page.locator("#feed-rows tr.tx").first
        assert await row.locator("b.action").inner_text() in ("release", "hold", "inspect", "manual")

        # Its false-colour preview loads (a decoded JPEG, not a broken image).
        thumb = page.locator("#feed-rows img.thumb").first
        await thumb.wait_for(timeout=10_000)
        await page.wait_for_function(
            "(() => { const i = document.querySelector('#feed-rows img.thumb');"
            " return i && i.complete && i.naturalWidth > 100; })()", timeout=10_000)
        await shot(page, "feed")

        # The detail page: reads, identity, verdict with the full preview.
        await row.locator("td a").first.click()
        await page.wait_for_selector("h2:has-text('OCR reads and identity')")
        assert "smartgate identify --group --explain" in await page.content()
        await page.wait_for_function(
            "(() => { const i = document.querySelector('img.preview');"
            " return !i || (i.complete && i.naturalWidth > 100); })()", timeout=10_000)
        await shot(page, "transaction")

        # Alarms: an estop is active while pressed, then listed as cleared.
        plc = gate.rigs["L1"].plc
        plc.press_estop(True)
        try:
            await until(page, "t.split('alarms-cleared')[0].includes('ESTOP')")
        finally:
            plc.press_estop(False)
        await until(page, "t.split('alarms-cleared')[1].split('Recent events')[0].includes('ESTOP')")
        await page.goto(f"{base}alarms")
        assert "ESTOP" in await page.inner_text("#alarms-cleared")
        assert "ESTOP" not in await page.inner_text("#alarms-active")
        await shot(page, "alarms")
        await page.goto(f"{base}diagnostics?doctor=1")
        await page.wait_for_selector("#doctor")
        assert await page.locator("table.frames").count() == 2  # one per firmware link
        await shot(page, "diagnostics")


def test_commands_need_a_login_and_cross_site_posts_fail_in_chromium(tmp_path: Path, broker: MosquittoBroker) -> None:
    asyncio.run(_commands(tmp_path, broker))


async def _commands(tmp_path: Path, broker: MosquittoBroker) -> None:
    console = console_section(tmp_path)
    base = f"http://{console['listen']}/"
    other = web.Application()
    other_port = free_port()

    async def attacker(_: web.Request) -> web.Response:
        # Another origin's page that posts the lane-closing form as soon as it loads.
        html = (f'<form id="f" method="post" action="{base}commands/lane-mode">'
                '<input name="lane" value="L1"><input name="mode" value="closed"></form>'
                '<script>document.getElementById("f").submit()</script>')
        return web.Response(text=html, content_type="text/html")

    other.router.add_get("/", attacker)
    runner = web.AppRunner(other)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", other_port).start()
    try:
        async with simulated_gate(tmp_path / "gate", broker, console=console) as gate, chromium() as browser:
            await wait_console(base)
            page = await browser.new_page()
            # Without a login there is no command form, and a direct POST is refused.
            await page.goto(base)
            assert page.url == f"{base}login"
            assert await page.locator("form[action='/commands/barrier']").count() == 0
            status = await page.evaluate(
                "fetch('/commands/barrier', {method: 'POST', body: new URLSearchParams("
                "{lane: 'L1', action: 'open', reason: 'x'})}).then(r => r.status)")
            assert status == 401
            await shot(page, "login")

            await log_in(page, base)
            await page.wait_for_selector("#lane-L1 form[action='/commands/lane-mode']")
            # A logged-in technician's browser visiting another origin: its POST is refused.
            attack = await browser.new_page()
            await attack.goto(f"http://127.0.0.1:{other_port}/")
            await attack.wait_for_url(f"{base}commands/lane-mode")
            assert "cross-site request refused" in await attack.content()
            assert (await lane_status(gate, "L1")).get("hub_mode") == "auto"

            # The same command from the console itself goes through the audited path.
            await page.select_option("#lane-L1 select[name=mode]", "manual")
            await page.click("#lane-L1 button.cmd-mode")
            await page.wait_for_selector("p.flash")
            assert "lane.mode lane=L1 mode=manual: done" in await page.inner_text("p.flash")
            assert (await lane_status(gate, "L1")).get("hub_mode") == "manual"
            deadline = time.monotonic() + 15
            audits: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not audits:
                audits = [e for e in gate.events_seen if e.get("code") == "LOCAL_COMMAND"]
                await asyncio.sleep(0.2)
            assert len(audits) == 1, gate.events_seen
            assert audits[0]["detail"]["issued_by"] == f"console:{USER}"
            assert audits[0]["detail"]["args"] == {"lane": "L1", "mode": "manual"}
            assert audits[0]["detail"]["ok"] is True
    finally:
        await runner.cleanup()
