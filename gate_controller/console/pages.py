"""The console's routes: server-rendered pages, the live feed (server-sent events), login and commands.

Security rules every handler relies on (each has a test): with ``auth`` configured nothing but the
login page and static files is served without a session; every POST must come from the console's
own origin and, past login, carry the session's CSRF token; commands need ``allow_commands`` and a
logged-in user; pages render no secret (the config is never shown, only the state it produced).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from gate_controller import __version__
from gate_controller.config.console import is_loopback
from gate_controller.console.auth import COOKIE, Session, same_token
from gate_controller.console.views import explain_decision, frame_rows, lane_points, row_of
from gate_controller.console.watch import FeedItem

if TYPE_CHECKING:
    from gate_controller.console.app import ConsoleServer

__all__ = ["build_app"]

log = logging.getLogger(__name__)

SERVER_KEY: web.AppKey[ConsoleServer] = web.AppKey("console")
_STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("streams")
_DOCTOR_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("doctor_lock")
_TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates")
_RENDERED: web.AppKey[OrderedDict[int, bytes]] = web.AppKey("rendered")
"""Feed messages already rendered, by their number in the feed: each is rendered once, however many
browsers follow the feed."""
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KEEPALIVE_S = 15.0
_POLL_S = 1.0
_QUEUE_RENDERED = 256
"""How often an idle feed checks that its browser is still connected."""
_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gate_controller.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False)
    return env


def _ago(ts: str | None) -> str:
    if not ts:
        return "-"
    return ts[11:23] if len(ts) >= 23 else ts


def build_app(server: ConsoleServer) -> web.Application:
    app = web.Application(middlewares=[_security_middleware], client_max_size=64 * 1024)
    app[SERVER_KEY] = server
    app[_STREAMS] = set()
    app[_DOCTOR_LOCK] = asyncio.Lock()
    app[_RENDERED] = OrderedDict()
    app[_TEMPLATES] = _templates()
    app.router.add_get("/", overview)
    app.router.add_get("/fragments/overview", overview_fragment)
    app.router.add_get("/feed", feed)
    app.router.add_get("/feed/stream", feed_stream)
    app.router.add_get("/transactions/{transaction_id}", transaction)
    app.router.add_get("/previews/{scan_id}.jpg", preview)
    app.router.add_get("/alarms", alarms)
    app.router.add_get("/diagnostics", diagnostics)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/commands/lane-mode", command_lane_mode)
    app.router.add_post("/commands/barrier", command_barrier)
    app.router.add_get("/static/{name}", static)
    app.on_shutdown.append(_close_streams)
    return app


# --------------------------------------------------------------------------- middleware and helpers


def _server(request: web.Request) -> ConsoleServer:
    return request.app[SERVER_KEY]


def _session(request: web.Request) -> Session | None:
    return _server(request).sessions.get(request.cookies.get(COOKIE))


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _same_origin(request: web.Request) -> bool:
    """A POST must come from a page of the console itself (checked before anything else)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if referer is None:
            return True  # not a browser (curl): CSRF needs a browser carrying the victim's cookie
        origin = referer
    parts = urlsplit(origin)
    return parts.netloc == request.host and parts.scheme == request.scheme


def _loopback_host(request: web.Request) -> bool:
    """The Host header names this machine's loopback (a page of another site that re-resolved its
    own name to 127.0.0.1, DNS rebinding, does not)."""
    host = urlsplit(f"//{request.host}").hostname or ""
    return host == "localhost" or is_loopback(host)


@web.middleware
async def _security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = _server(request)
    if server.auth is None and not _loopback_host(request):
        # Without a login the console only listens on loopback; only loopback names may ask.
        raise web.HTTPMisdirectedRequest(text="this console answers only to a loopback address")
    if request.method == "POST" and not _same_origin(request):
        log.warning("console: cross-site %s %s from %s refused", request.method, request.path, _client(request))
        raise web.HTTPForbidden(text="cross-site request refused")
    open_paths = request.path in ("/login",) or request.path.startswith("/static/")
    if server.auth is not None and not open_paths and _session(request) is None:
        if request.method == "GET" and request.path not in ("/feed/stream",) and \
                not request.path.startswith(("/fragments/", "/previews/")):
            raise web.HTTPSeeOther(location="/login")
        raise web.HTTPUnauthorized(text="log in first")
    response = await handler(request)
    if not response.prepared:  # a stream sent its headers already (it sets its own)
        for key, value in _HEADERS.items():
            response.headers.setdefault(key, value)
    return response


def _render(request: web.Request, template: str, **context: Any) -> web.Response:
    server = _server(request)
    session = _session(request)
    flash: list[str] = []
    if session is not None:
        flash, session.flash = session.flash, []
    env = request.app[_TEMPLATES]
    html = env.get_template(template).render(
        site=server.site, gate=server.gate, version=__version__, session=session,
        user=session.user if session else None, csrf=session.csrf if session else "",
        auth=server.auth is not None, commands=server.commands_enabled,
        flash=flash, path=request.path, **context,
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8")


def _fragment(request: web.Request, template: str, **context: Any) -> str:
    env = request.app[_TEMPLATES]
    return env.get_template(template).render(**context)


def _overview_context(server: ConsoleServer) -> dict[str, Any]:
    status = server.sources.status()
    lanes = []
    for lane_id, lane in (status.get("lanes") or {}).items():
        lanes.append({"id": lane_id, **lane, "points": lane_points(lane.get("inputs")),
                      "links": {n: link for n, link in (status.get("links") or {}).items()
                                if link.get("lane") == lane_id}})
    return {"status": status, "lanes": lanes, "model": server.sources.model(),
            "watch": server.watch.counters, "subscribers": server.watch.subscribers}


# --------------------------------------------------------------------------- pages


async def overview(request: web.Request) -> web.Response:
    return _render(request, "overview.html", **_overview_context(_server(request)))


async def overview_fragment(request: web.Request) -> web.Response:
    server = _server(request)
    session = _session(request)
    html = _fragment(request, "overview_body.html", **_overview_context(server), commands=server.commands_enabled,
                     csrf=session.csrf if session else "")
    return web.Response(text=html, content_type="text/html", charset="utf-8")


async def feed(request: web.Request) -> web.Response:
    server = _server(request)
    rows = [row_of(record, server.watch) for record in server.watch.transactions()]
    return _render(request, "feed.html", rows=rows)


async def feed_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new transaction as a rendered table row, each event as a line."""
    server = _server(request)
    response = web.StreamResponse(headers={**_HEADERS, "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    sub = server.watch.subscribe()
    task = asyncio.current_task()
    assert task is not None
    request.app[_STREAMS].add(task)
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        idle = 0.0
        while True:
            if sub.lagged:
                await response.write(b"event: lagged\ndata: reload\n\n")
                break
            try:
                item = await asyncio.wait_for(sub.queue.get(), _POLL_S)
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the browser went away: stop feeding it now, not at the next write
                idle += _POLL_S
                if idle >= _KEEPALIVE_S:
                    idle = 0.0
                    await response.write(b": keepalive\n\n")
                continue
            idle = 0.0
            await response.write(_feed_message(request, item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        server.watch.unsubscribe(sub)
        request.app[_STREAMS].discard(task)
    return response


def _feed_message(request: web.Request, item: FeedItem) -> bytes:
    rendered = request.app[_RENDERED]
    message = rendered.get(item.number)
    if message is None:
        if item.kind == "transaction":
            html = _fragment(request, "feed_row.html", row=row_of(item.body, _server(request).watch))
        else:
            html = _fragment(request, "event_line.html", event=item.body)
        data = "".join(f"data: {line}\n" for line in html.strip().splitlines())
        message = f"event: {item.kind}\n{data}\n".encode()
        rendered[item.number] = message
        while len(rendered) > _QUEUE_RENDERED:
            rendered.popitem(last=False)
    return message


async def _close_streams(app: web.Application) -> None:
    streams: set[asyncio.Task[Any]] = app[_STREAMS]
    for task in list(streams):
        task.cancel()


async def transaction(request: web.Request) -> web.Response:
    server = _server(request)
    transaction_id = request.match_info["transaction_id"]
    record = server.watch.transaction(transaction_id) if _ID.match(transaction_id) else None
    if record is None:
        raise web.HTTPNotFound(text=f"transaction {transaction_id[:64]} is not among the last "
                                    f"{server.watch.size} this console kept")
    decision = server.watch.decision(transaction_id)
    explained = await asyncio.to_thread(explain_decision, decision, server.sources.identity_settings())
    return _render(request, "transaction.html", row=row_of(record, server.watch), record=record,
                   decision=decision, explained=explained)


async def preview(request: web.Request) -> web.Response:
    scan_id = request.match_info["scan_id"]
    data = _server(request).watch.preview(scan_id) if _ID.match(scan_id) else None
    if data is None:
        raise web.HTTPNotFound(text="no preview kept for that scan")
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def alarms(request: web.Request) -> web.Response:
    watch = _server(request).watch
    return _render(request, "alarms.html", active=watch.active_alarms(), cleared=watch.cleared_alarms(),
                   events=watch.events()[:50])


async def diagnostics(request: web.Request) -> web.Response:
    server = _server(request)
    checks: list[Mapping[str, Any]] | None = None
    ran_at: str | None = None
    if request.query.get("doctor") == "1":
        lock = request.app[_DOCTOR_LOCK]
        async with lock:  # one doctor run at a time, whoever asks
            checks = list(await server.sources.doctor())
        ran_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    frames = {name: frame_rows(notes) for name, notes in server.sources.frames().items()}
    status = server.sources.status()
    return _render(request, "diagnostics.html", checks=checks, ran_at=ran_at, frames=frames,
                   links=status.get("links") or {})


# --------------------------------------------------------------------------- login


async def login_page(request: web.Request) -> web.Response:
    if _server(request).auth is None:
        raise web.HTTPSeeOther(location="/")
    return _render(request, "login.html", error=None)


async def login(request: web.Request) -> web.Response:
    server = _server(request)
    if server.auth is None:
        raise web.HTTPNotFound(text="this console has no login")
    client = _client(request)
    wait = server.limiter.retry_after(client)
    if wait is not None:
        log.warning("console: login from %s refused, too many failures", client)
        response = _render(request, "login.html", error=f"Too many failed logins: try again in {wait:.0f} s.")
        response.set_status(429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    form = await request.post()
    username = str(form.get("username", ""))
    password = str(form.get("password", ""))
    if not await server.auth.verify(username, password):
        server.limiter.failed(client)
        log.warning("console: failed login for %r from %s", username[:64], client)
        response = _render(request, "login.html", error="Wrong user name or password.")
        response.set_status(401)
        return response
    server.limiter.succeeded(client)
    session = server.sessions.create(server.auth.username)
    log.info("console: %s logged in from %s", session.user, client)
    response = web.HTTPSeeOther(location="/")
    response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", secure=server.secure_cookies,
                        path="/", max_age=int(server.sessions.ttl_s))
    raise response


async def logout(request: web.Request) -> web.Response:
    server = _server(request)
    session = _session(request)
    form = await request.post()
    if session is not None and same_token(_str(form.get("csrf")), session.csrf):
        server.sessions.drop(session.token)
    response = web.HTTPSeeOther(location="/login" if server.auth is not None else "/")
    response.del_cookie(COOKIE, path="/")
    raise response


# --------------------------------------------------------------------------- commands


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def _command_session(request: web.Request) -> tuple[Session, Mapping[str, Any]]:
    server = _server(request)
    if not server.commands_enabled:
        raise web.HTTPForbidden(text="commands are off on this console (console.allow_commands)")
    session = _session(request)
    if session is None:
        raise web.HTTPUnauthorized(text="log in first")
    form = await request.post()
    if not same_token(_str(form.get("csrf")), session.csrf):
        log.warning("console: command without a valid CSRF token from %s refused", _client(request))
        raise web.HTTPForbidden(text="invalid or missing CSRF token: reload the page")
    return session, form


async def _run_command(request: web.Request, session: Session, name: str, args: dict[str, Any]) -> web.Response:
    server = _server(request)
    assert server.sources.command is not None
    result = await server.sources.command(name, args, f"console:{session.user}", _client(request))
    what = f"{name} {' '.join(f'{k}={v}' for k, v in args.items() if k != 'reason')}"
    session.flash.append(f"{what}: done" if result.ok else f"{what}: refused: {result.error}")
    raise web.HTTPSeeOther(location="/")


async def command_lane_mode(request: web.Request) -> web.Response:
    session, form = await _command_session(request)
    args = {"lane": _str(form.get("lane")), "mode": _str(form.get("mode"))}
    return await _run_command(request, session, "lane.mode", args)


async def command_barrier(request: web.Request) -> web.Response:
    session, form = await _command_session(request)
    reason = (_str(form.get("reason")) or "").strip() or "manual from the technician console"
    args = {"lane": _str(form.get("lane")), "action": _str(form.get("action")), "reason": reason}
    return await _run_command(request, session, "barrier", args)


# --------------------------------------------------------------------------- static files


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    if not re.fullmatch(r"[a-z0-9_-]{1,40}\.[a-z]{2,4}", name) or suffix not in _STATIC_TYPES:
        raise web.HTTPNotFound()
    resource = importlib.resources.files("gate_controller.console").joinpath("static", name)
    with contextlib.suppress(FileNotFoundError):
        return web.Response(body=resource.read_bytes(), content_type=_STATIC_TYPES[suffix],
                            headers={"Cache-Control": "max-age=3600"})
    raise web.HTTPNotFound()
