"""The console server on a real socket: what it serves, to whom, and what a command leaves behind.

Commands go through a real `CommandDispatcher` into a real outbox, so the audit events checked here
are the ones the hub would receive.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher

from firmware_bridge.link import FrameNote
from gate_controller.config import BacklogConfig
from gate_controller.config.console import ConsoleConfig
from gate_controller.console.app import ConsoleServer, ConsoleSources
from gate_controller.console.watch import GateWatch
from gate_controller.core.errors import ConfigError
from gate_controller.decision.identity import IdentitySettings
from gate_controller.hub.commands import CommandDispatcher, ReplayCache
from gate_controller.hub.outbox import Outbox
from tests.support.broker import free_port, make_tls_material
from tests.support.hub import COMMAND_KEY, GATE, ROOT, SITE, RecordingTarget, transaction_record

PASSWORD = "correct horse battery"


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return run


def status() -> Mapping[str, Any]:
    lane = {"state": "idle", "mode": "automatic", "phase": "idle", "hub_mode": "auto", "transaction_id": None,
            "plc_connected": True, "faults": [], "counters": {"transactions": 3},
            "inputs": {"loop_entry": False, "loop_stop": True, "loop_safety": False, "barrier_up": False,
                       "barrier_down": True, "estop": False, "local_manual": False, "light_red": True,
                       "light_green": False, "plc_watchdog": 0, "host_heartbeat": 17}}
    return {
        "sw_version": "test", "site": SITE, "gate": GATE, "boot_id": 4, "uptime_s": 12.0, "pid": 1,
        "lanes": {"L1": lane, "L2": {**lane, "plc_connected": False, "inputs": None}},
        "links": {"combo-1": {"up": True, "lane": "L1", "device": "combo", "counters": {"frames_rx": 9}}},
        "hub": {"connected": True, "inflight": 0, "published": 5, "acknowledged": 5, "last_error": None},
        "backlog": {"pending": 0},
        "inference": {"count": 2, "unavailable": 0, "p50_ms": 40.0, "p95_ms": 55.0, "model_loaded": True,
                      "worker_pid": 2, "worker_restarts": 0,
                      "review_lanes": {"L1": {"window": 40, "suspect_share": 0.025, "unavailable_share": 0.0,
                                              "input_distance": 0.412, "drift": False},
                                       "L2": {"window": 40, "suspect_share": 0.3, "unavailable_share": 0.05,
                                              "input_distance": None, "drift": True}}},
        "counters": {},
    }


async def doctor() -> Sequence[Mapping[str, Any]]:
    await asyncio.sleep(0)
    return [{"name": "storage", "ok": True, "detail": "writable", "fix": ""}]


@dataclass
class Console:
    server: ConsoleServer
    base: str
    target: RecordingTarget
    outbox: Outbox
    watch: GateWatch
    hash_text: str


@asynccontextmanager
async def console(tmp_path: Path, *, auth: bool = True, allow_commands: bool = True, tls: bool = False,
                  attempts: int = 5, limits: BacklogConfig | None = None) -> AsyncIterator[Console]:
    hash_text = PasswordHasher().hash(PASSWORD)
    (tmp_path / "console-password").write_text(hash_text + "\n")
    port = free_port()
    data: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "allow_commands": allow_commands}
    if auth:
        data["auth"] = {"username": "tech", "password_hash_file": "console-password", "login_attempts": attempts}
    if tls:
        material = make_tls_material(tmp_path / "tls")
        data["tls"] = {"cert_file": str(material.server_cert), "key_file": str(material.server_key)}
    config = ConsoleConfig.model_validate(data, strict=False)
    outbox = Outbox.open(tmp_path / "outbox.sqlite3", root_topic=ROOT, site=SITE, gate=GATE, limits=limits)
    replay = ReplayCache(tmp_path / "replay.sqlite3", window_s=86400)
    target = RecordingTarget()
    dispatcher = CommandDispatcher(key=COMMAND_KEY, target=target, outbox=outbox, replay=replay)
    watch = GateWatch(size=20)
    outbox.add_observer(watch.on_message)

    async def command(name: str, args: Mapping[str, Any], issued_by: str, source: str) -> Any:
        return await dispatcher.handle_local(name, args, issued_by=issued_by, source=source)

    sources = ConsoleSources(
        status=status, model=lambda: {"name": "m", "version": "1.0", "sha256": "ab" * 32,
                                      "modes": {"L1": "live", "L2": "shadow"}, "watch": None},
        frames=lambda: {"combo-1": [FrameNote(1.7e9, "rx", "HELLO", 0, 40)]}, doctor=doctor,
        identity_settings=IdentitySettings, command=command if allow_commands else None,
    )
    server = ConsoleServer(config, sources=sources, watch=watch, site=SITE, gate=GATE, config_dir=tmp_path)
    await server.start()
    try:
        yield Console(server, f"{'https' if tls else 'http'}://127.0.0.1:{port}", target, outbox, watch, hash_text)
    finally:
        await server.close()
        outbox.close()
        replay.close()


def session(**kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


async def login(http: aiohttp.ClientSession, base: str, password: str = PASSWORD, user: str = "tech") -> int:
    async with http.post(f"{base}/login", data={"username": user, "password": password},
                         allow_redirects=False) as response:
        return response.status


async def csrf_of(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/") as response:
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert found is not None
    return found.group(1)


def audit_events(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute("SELECT payload FROM outbox WHERE kind = 'event' ORDER BY id").fetchall()
    finally:
        conn.close()
    events = [json.loads(row[0]) for row in rows]
    return [e for e in events if e["code"] == "LOCAL_COMMAND"]


# --------------------------------------------------------------------------- listening


@sync
async def test_listens_only_on_the_configured_address(tmp_path: Path) -> None:
    async with console(tmp_path, auth=False, allow_commands=False) as c:
        port = int(c.base.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as http, http.get(f"{c.base}/") as response:
            assert response.status == 200
            assert "Lane L1" in await response.text()
        # A page whose name re-resolves to 127.0.0.1 (DNS rebinding) is not answered without a login.
        async with aiohttp.ClientSession() as http, http.get(
                f"{c.base}/", headers={"Host": f"evil.example:{port}"}) as response:
            assert response.status == 421
        async with aiohttp.ClientSession() as http, http.get(
                f"{c.base}/", headers={"Host": f"localhost:{port}"}) as response:
            assert response.status == 200
        # Other loopback addresses of this machine: nobody listens there.
        for host in ("127.0.0.2", "127.1.2.3"):
            with socket.socket() as sock:
                sock.settimeout(2.0)
                with pytest.raises(ConnectionRefusedError):
                    sock.connect((host, port))


def test_a_bad_password_hash_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "console-password").write_text("not a hash\n")
    config = ConsoleConfig.model_validate({"listen": "127.0.0.1:1", "auth": {
        "password_hash_file": "console-password"}}, strict=False)
    sources = ConsoleSources(status=status, model=lambda: None, frames=dict, doctor=doctor,
                             identity_settings=IdentitySettings)
    with pytest.raises(ConfigError, match="does not hold an argon2 hash"):
        ConsoleServer(config, sources=sources, watch=GateWatch(), site=SITE, gate=GATE, config_dir=tmp_path)
    (tmp_path / "console-password").write_text("$argon2id$v=19$m=65536,t=3,p=4$truncated\n")
    with pytest.raises(ConfigError, match="malformed argon2 hash"):
        ConsoleServer(config, sources=sources, watch=GateWatch(), site=SITE, gate=GATE, config_dir=tmp_path)
    (tmp_path / "console-password").unlink()
    with pytest.raises(ConfigError, match="cannot read secret file"):
        ConsoleServer(config, sources=sources, watch=GateWatch(), site=SITE, gate=GATE, config_dir=tmp_path)


# --------------------------------------------------------------------------- login and sessions


@sync
async def test_pages_need_a_login_when_auth_is_configured(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        async with http.get(f"{c.base}/", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/login"
        for path in ("/fragments/overview", "/feed/stream", "/previews/SCAN-000001.jpg"):
            async with http.get(f"{c.base}{path}", allow_redirects=False) as response:
                assert response.status == 401, path
        assert await login(http, c.base, "wrong password") == 401
        assert await login(http, c.base) == 303
        async with http.get(f"{c.base}/") as response:
            assert response.status == 200
            page = await response.text()
        assert "Lane L2" in page
        assert 'L2 <b class="mode-shadow">shadow</b>' in page
        assert "<td>L1</td><td>40</td><td>2.5 %</td><td>0.0 %</td><td>0.412</td>" in page
        assert "<td>L2</td><td>40</td><td>30.0 %</td><td>5.0 %</td><td>-</td><td class=\"bad\">DRIFT</td>" in page


@sync
async def test_session_cookie_is_httponly_and_samesite_strict(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        async with http.post(f"{c.base}/login", data={"username": "tech", "password": PASSWORD},
                             allow_redirects=False) as response:
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Secure" not in cookie


@sync
async def test_session_cookie_is_secure_with_tls(tmp_path: Path) -> None:
    async with console(tmp_path, tls=True) as c, session(connector=aiohttp.TCPConnector(ssl=False)) as http:
        async with http.post(f"{c.base}/login", data={"username": "tech", "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 303
            cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie


@sync
async def test_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    async with console(tmp_path, attempts=3) as c, session() as http:
        for _ in range(3):
            assert await login(http, c.base, "guess") == 401
        # Even the right password is refused until the window has passed.
        async with http.post(f"{c.base}/login", data={"username": "tech", "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert "Too many failed logins" in await response.text()


@sync
async def test_no_secret_is_ever_rendered(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        assert await login(http, c.base) == 303
        c.watch.on_message("transaction", transaction_record(1))
        tx = c.watch.transactions()[0]["transaction_id"]
        pages = ["/", "/fragments/overview", "/feed", f"/transactions/{tx}", "/alarms", "/diagnostics",
                 "/diagnostics?doctor=1", "/login"]
        secrets = [c.hash_text, c.hash_text.split("$")[-1], PASSWORD, COMMAND_KEY.decode()]
        for path in pages:
            async with http.get(f"{c.base}{path}") as response:
                assert response.status == 200, path
                text = await response.text()
            for secret in secrets:
                assert secret not in text, (path, secret)


# --------------------------------------------------------------------------- commands


@sync
async def test_commands_need_a_login(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        async with http.post(f"{c.base}/commands/barrier", data={"lane": "L1", "action": "open", "csrf": "x"},
                             allow_redirects=False) as response:
            assert response.status == 401
        assert c.target.calls == []
        assert audit_events(c.outbox.path) == []


@sync
async def test_commands_are_off_unless_allowed(tmp_path: Path) -> None:
    async with console(tmp_path, allow_commands=False) as c, session() as http:
        assert await login(http, c.base) == 303
        page = await (await http.get(f"{c.base}/")).text()
        assert "/commands/barrier" not in page
        async with http.post(f"{c.base}/commands/barrier", data={"lane": "L1", "action": "open"},
                             allow_redirects=False) as response:
            assert response.status == 403
        assert c.target.calls == []


@sync
async def test_commands_need_the_session_csrf_token(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        assert await login(http, c.base) == 303
        for form in ({"lane": "L1", "mode": "closed"}, {"lane": "L1", "mode": "closed", "csrf": "forged"}):
            async with http.post(f"{c.base}/commands/lane-mode", data=form, allow_redirects=False) as response:
                assert response.status == 403
        assert c.target.calls == []


@sync
async def test_cross_site_posts_are_rejected(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        assert await login(http, c.base) == 303
        token = await csrf_of(http, c.base)
        form = {"lane": "L1", "mode": "closed", "csrf": token}
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Referer": "http://evil.example/page"}):
            async with http.post(f"{c.base}/commands/lane-mode", data=form, headers=headers,
                                 allow_redirects=False) as response:
                assert response.status == 403, headers
                assert "cross-site" in await response.text()
        assert c.target.calls == []
        # The same form from the console's own origin goes through.
        async with http.post(f"{c.base}/commands/lane-mode", data=form, headers={"Origin": c.base},
                             allow_redirects=False) as response:
            assert response.status == 303
        assert c.target.calls == [("lane.mode", {"lane": "L1", "mode": "closed"})]


@sync
async def test_every_command_is_audited_as_an_event(tmp_path: Path) -> None:
    async with console(tmp_path) as c, session() as http:
        assert await login(http, c.base) == 303
        token = await csrf_of(http, c.base)
        await http.post(f"{c.base}/commands/barrier", allow_redirects=False,
                        data={"lane": "L2", "action": "open", "reason": "truck stuck", "csrf": token})
        c.target.refuse = "estop pressed"
        await http.post(f"{c.base}/commands/barrier", allow_redirects=False,
                        data={"lane": "L1", "action": "close", "reason": "", "csrf": token})
        c.target.refuse = None
        await http.post(f"{c.base}/commands/lane-mode", allow_redirects=False,
                        data={"lane": "L9", "mode": "auto", "csrf": token})
        page = await (await http.get(f"{c.base}/")).text()
    assert c.target.calls == [("barrier", {"lane": "L2", "action": "open", "reason": "truck stuck",
                                           "operator": "console:tech"})]
    events = audit_events(c.outbox.path)
    assert [(e["detail"]["command"], e["detail"]["ok"], e["severity"]) for e in events] == [
        ("barrier", True, "info"), ("barrier", False, "warning"), ("lane.mode", False, "warning")]
    assert all(e["detail"]["issued_by"] == "console:tech" and e["detail"]["source"] == "127.0.0.1" for e in events)
    assert events[1]["detail"]["error"] == "estop pressed"
    assert "unknown lane 'L9'" in events[2]["detail"]["error"]
    assert events[0]["lane"] == "L2"
    assert events[2]["lane"] is None
    # The outcome is shown to the user once, after the redirect.
    assert "refused: estop pressed" in page


@sync
async def test_alarms_page_shows_the_backlog_alarm_raised_and_cleared(tmp_path: Path) -> None:
    """BACKLOG_FULL is written by the outbox itself (not by a lane): the alarms page still shows it."""
    limits = BacklogConfig(max_messages=10, max_mb=100, max_previews=10, max_telemetry=10, min_free_disk_mb=1)
    async with console(tmp_path, auth=False, allow_commands=False, limits=limits) as c, \
            aiohttp.ClientSession() as http:
        for i in range(10):
            await c.outbox.complete_transaction(transaction_record(i))
        await asyncio.sleep(0.05)
        async with http.get(f"{c.base}/alarms") as response:
            page = await response.text()
        active = page.split('id="alarms-active"', 1)[1].split("</table>", 1)[0]
        assert "<b>BACKLOG_FULL</b>" in active
        assert "sev-error" in active
        assert "&#34;max_messages&#34;: 10" in active or '"max_messages": 10' in active
        rows = [r for r in await c.outbox.fetch_after(0, 100) if r.kind == "transaction"]
        await c.outbox.acknowledge([r.id for r in rows])  # the hub caught up
        await asyncio.sleep(0.05)
        async with http.get(f"{c.base}/alarms") as response:
            page = await response.text()
        active = page.split('id="alarms-active"', 1)[1].split("</table>", 1)[0]
        cleared = page.split('id="alarms-cleared"', 1)[1].split("</table>", 1)[0]
        assert "BACKLOG_FULL" not in active
        assert "No active alarm." in active
        assert "<b>BACKLOG_FULL</b>" in cleared


# --------------------------------------------------------------------------- feed


@sync
async def test_feed_pushes_new_transactions_and_serves_previews(tmp_path: Path) -> None:
    async with console(tmp_path, auth=False, allow_commands=False) as c, aiohttp.ClientSession() as http:
        async with http.get(f"{c.base}/feed/stream") as stream, http.get(f"{c.base}/feed/stream") as other:
            assert stream.headers["Content-Type"] == "text/event-stream"
            await stream.content.readuntil(b"\n\n")  # the greeting
            await other.content.readuntil(b"\n\n")
            record = transaction_record(7, scan_id="SCAN-7")
            c.watch.on_preview("SCAN-7", b"\xff\xd8jpeg bytes\xff\xd9")
            await c.outbox.commit_transaction(record)
            async with asyncio.timeout(5):
                message = (await stream.content.readuntil(b"\n\n")).decode()
                # Every browser gets the same row (rendered once for all of them).
                assert (await other.content.readuntil(b"\n\n")).decode() == message
        assert message.startswith("event: transaction\n")
        assert f'id="tx-{record["transaction_id"]}"' in message
        assert 'src="/previews/SCAN-7.jpg"' in message
        assert "ALL_RELEASED" in message
        async with http.get(f"{c.base}/previews/SCAN-7.jpg") as response:
            assert response.content_type == "image/jpeg"
            assert await response.read() == b"\xff\xd8jpeg bytes\xff\xd9"
        async with http.get(f"{c.base}/transactions/{record['transaction_id']}") as response:
            text = await response.text()
        assert "CUS-7" in text
        assert "organic" in text
        async with asyncio.timeout(5):  # the closed stream is noticed and unsubscribed
            while c.watch.subscribers:
                await asyncio.sleep(0.1)


def test_a_browser_that_stops_reading_is_dropped_not_waited_for() -> None:
    watch = GateWatch(size=10)
    slow = watch.subscribe()
    for n in range(200):  # never read: the watch must neither block nor grow
        watch.on_message("transaction", transaction_record(n))
    assert slow.lagged
    assert slow.queue.qsize() == slow.queue.maxsize
    assert len(watch.transactions()) == 10
