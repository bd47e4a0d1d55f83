"""Hub commands (MQTT contract sections 7 and 8): verify, act, and answer exactly once.

A command arrives on ``{root}/cmd/{name}`` as ``{"request_id", "ts", "issued_by", "args", "sig"}``.
Checks run in this order, and the first failure decides the reply:

1. the payload is a JSON object with the four fields of the right types (else *malformed*);
2. ``sig`` is the HMAC-SHA256 of the canonical JSON without ``sig`` under the site key;
3. ``ts`` is within ``mqtt.clock_skew_s`` of the gate's clock;
4. ``request_id`` was not seen in the last ``mqtt.replay_window_s`` (persisted: a restart does
   not reopen the window). It is remembered only once 2 and 3 passed, so forged or stale messages
   cannot fill the cache or burn a legitimate id;
5. the command name is known and its arguments are exactly the documented ones.

Every rejection is answered ``ok: false`` with the reason and raises a ``COMMAND_REJECTED`` event;
nothing is actuated. A verified command whose action cannot be carried out (`CommandRefused`, an
unknown scan) is answered ``ok: false`` without that alarm. Replies go through the outbox like
everything else, so a reply is not lost to a disconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from gate_controller.core.errors import ArchiveError, OutboxError
from gate_controller.core.ports import CommandRefused, CommandTarget
from gate_controller.core.timestamps import WallClock, parse_timestamp, utc_now, utc_timestamp
from gate_controller.decision.signing import verify
from gate_controller.hub.archive import ScanArchive
from gate_controller.hub.outbox import Outbox
from inference.errors import SmartGateError
from inference.scan import Scan

__all__ = ["COMMAND_NAMES", "LOCAL_COMMAND_NAMES", "CommandDispatcher", "LocalResult", "Rejection", "ReplayCache"]

logger = logging.getLogger(__name__)

COMMAND_NAMES: Final = ("barrier", "lane.mode", "rebirth", "scan.fetch", "inspection.result", "config.reload",
                         "review.mode", "review.confirm", "model.activate", "samples.upload")
LOCAL_COMMAND_NAMES: Final = ("barrier", "lane.mode")
"""What the technician console may ask for (with ``console.allow_commands``)."""

_ID_TEXT: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SCAN_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LABEL: Final = re.compile(r"^[A-Za-z0-9_.:/ -]{1,64}$")
_MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MODEL_VERSION: Final = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_MAX_REGIONS: Final = 64
_MAX_PAYLOAD: Final = 64 * 1024


class Rejection(Exception):
    """A command that fails verification; ``reason`` goes into the reply and the event."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ReplayCache:
    """Request ids seen in the replay window, in SQLite so a restart does not forget them."""

    def __init__(self, path: str | Path, *, window_s: float, wall_clock: WallClock = utc_now) -> None:
        self.path = Path(path)
        self.window_s = window_s
        self._wall_clock = wall_clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS seen (request_id TEXT PRIMARY KEY, seen_at REAL NOT NULL)")
        self._lock = asyncio.Lock()

    def remember(self, request_id: str) -> bool:
        """True if ``request_id`` is new (and now remembered), False if it is a replay. Blocking."""
        now = self._wall_clock().timestamp()
        cutoff = now - self.window_s
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("DELETE FROM seen WHERE seen_at < ?", (cutoff,))
            row = self._conn.execute("SELECT seen_at FROM seen WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                self._conn.execute("COMMIT")
                return False
            self._conn.execute("INSERT INTO seen (request_id, seen_at) VALUES (?, ?)", (request_id, now))
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            self._conn.execute("ROLLBACK")
            raise
        return True

    async def aremember(self, request_id: str) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self.remember, request_id)

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class LocalResult:
    """The outcome of a console command, as audited."""

    ok: bool
    error: str | None
    event_seq: int | None
    """``seq`` of the LOCAL_COMMAND event that audits it (None when the event could not be written)."""


@dataclass(frozen=True)
class _Command:
    name: str
    request_id: str
    issued_by: str
    args: Mapping[str, Any]


class CommandDispatcher:
    """Implements `hub.CommandHandler`: every call to `handle` commits exactly one reply."""

    def __init__(
        self,
        *,
        key: bytes,
        target: CommandTarget,
        outbox: Outbox,
        replay: ReplayCache,
        archive: ScanArchive | None = None,
        clock_skew_s: float = 300.0,
        wall_clock: WallClock = utc_now,
        render_png: Callable[[Scan], bytes] | None = None,
    ) -> None:
        if not key:
            raise ValueError("the command key must not be empty")
        self._key = key
        self._target = target
        self._outbox = outbox
        self._replay = replay
        self._archive = archive
        self._skew_s = clock_skew_s
        self._wall_clock = wall_clock
        self._render_png = render_png
        self._rebirth: Callable[[], Awaitable[bool]] | None = None
        self.accepted = 0
        self.rejected = 0

    def bind_rebirth(self, rebirth: Callable[[], Awaitable[bool]]) -> None:
        """The hub link registers its `rebirth` here (the dispatcher is built before the link)."""
        self._rebirth = rebirth

    async def handle(self, name: str, payload: bytes) -> Mapping[str, Any]:
        """Verify and run one command; returns the reply, already committed to the outbox."""
        request_id: str | None = None
        lane: str | None = None
        issued_by: str | None = None
        try:
            obj = _parse(payload)
            request_id = _str_or_none(obj.get("request_id"))
            issued_by = _str_or_none(obj.get("issued_by"))
            command = self._verify(name, obj)
            lane = _str_or_none(command.args.get("lane"))
            await self._check_replay(command)
            self._check_args(command)
        except Rejection as rejection:
            self.rejected += 1
            logger.warning("hub command %s rejected (request_id=%r, issued_by=%r): %s",
                           name, request_id, issued_by, rejection.reason)
            await self._reject_event(name, request_id, issued_by, lane, rejection)
            return await self._reply(request_id, ok=False, error=rejection.reason)
        except (OSError, sqlite3.Error) as err:
            logger.error("hub command %s: replay cache unavailable: %s", name, err)  # noqa: TRY400
            return await self._reply(request_id, ok=False, error="gate cannot check replays right now")
        self.accepted += 1
        logger.info("hub command %s accepted (request_id=%s, issued_by=%s)", name, command.request_id,
                    command.issued_by)
        try:
            await self._execute(command)
        except CommandRefused as err:
            return await self._reply(command.request_id, ok=False, error=str(err) or "refused")
        except ArchiveError as err:
            return await self._reply(command.request_id, ok=False, error=str(err))
        except SmartGateError as err:
            logger.error("hub command %s (%s) failed: %s", name, command.request_id, err)  # noqa: TRY400
            return await self._reply(command.request_id, ok=False, error=f"failed: {err}")
        except Exception:
            logger.exception("hub command %s (%s) failed", name, command.request_id)
            return await self._reply(command.request_id, ok=False, error="internal error")
        return await self._reply(command.request_id, ok=True, error=None)

    async def handle_local(self, name: str, args: Mapping[str, Any], *, issued_by: str,
                           source: str) -> LocalResult:
        """Run a command of the technician console through the same checks and actions as a hub command.

        The console authenticated the user (there is no signature to verify and no hub request to
        answer). Arguments are checked exactly like the hub's, the action goes to the same target
        (whose lane enforces the PLC safety rules), and every attempt, carried out or not, is
        audited as a ``LOCAL_COMMAND`` event with the user, the client address and the outcome.
        """
        command = _Command(name=name, request_id="", issued_by=issued_by, args=dict(args))
        error: str | None = None
        try:
            self._check_local(command)
        except Rejection as rejection:
            error = rejection.reason
        else:
            logger.info("console command %s %s by %s from %s", name, dict(args), issued_by, source)
            try:
                await self._execute(command)
            except CommandRefused as err:
                error = str(err) or "refused"
            except SmartGateError as err:
                logger.error("console command %s failed: %s", name, err)  # noqa: TRY400
                error = f"failed: {err}"
            except Exception:
                logger.exception("console command %s failed", name)
                error = "internal error"
        lane = _str_or_none(args.get("lane"))
        detail = {"command": name, "args": dict(args), "issued_by": issued_by, "source": source,
                  "ok": error is None, "error": error}
        seq: int | None = None
        try:
            committed = await self._outbox.commit_event(
                lane=lane if lane in self._target.lane_ids() else None, type="state", code="LOCAL_COMMAND",
                severity="info" if error is None else "warning", active=True, detail=detail)
            seq = committed.seq
        except OutboxError as err:
            logger.error("cannot record LOCAL_COMMAND: %s", err)  # noqa: TRY400
        return LocalResult(ok=error is None, error=error, event_seq=seq)

    # ------------------------------------------------------------------ verification

    def _verify(self, name: str, obj: Mapping[str, Any]) -> _Command:
        for field_name, kind in (("request_id", str), ("ts", str), ("issued_by", str), ("args", dict),
                                 ("sig", str)):
            if field_name not in obj:
                raise Rejection("malformed", f"malformed command: missing {field_name}")
            if not isinstance(obj[field_name], kind):
                raise Rejection("malformed", f"malformed command: {field_name} must be a {kind.__name__}")
        if not _ID_TEXT.match(obj["request_id"]):
            raise Rejection("malformed", "malformed command: request_id must be 1..128 of [A-Za-z0-9_.:-]")
        if not 1 <= len(obj["issued_by"]) <= 128:
            raise Rejection("malformed", "malformed command: issued_by must be 1..128 characters")
        if not verify(obj, self._key):
            raise Rejection("signature", "bad signature")
        try:
            sent = parse_timestamp(obj["ts"])
        except ValueError as err:
            raise Rejection("malformed", f"malformed command: {err}") from err
        offset = (self._wall_clock() - sent).total_seconds()
        if abs(offset) > self._skew_s:
            raise Rejection("stale", f"ts is {offset:+.0f} s from the gate clock (limit {self._skew_s:g} s)")
        return _Command(name=name, request_id=obj["request_id"], issued_by=obj["issued_by"], args=obj["args"])

    async def _check_replay(self, c: _Command) -> None:
        if not await self._replay.aremember(c.request_id):
            raise Rejection("replay", f"request_id {c.request_id!r} was already used")

    def _check_local(self, c: _Command) -> None:
        if c.name not in LOCAL_COMMAND_NAMES:
            raise Rejection("unknown", f"the console cannot send {c.name!r}")
        self._check_args(c)

    def _check_args(self, c: _Command) -> None:
        if c.name not in COMMAND_NAMES:
            raise Rejection("unknown", f"unknown command {c.name!r}")
        args = c.args
        if c.name == "barrier":
            _exact(args, ("lane", "action", "reason"))
            self._lane(args["lane"])
            _choice(args, "action", ("open", "close"))
            if not isinstance(args["reason"], str) or not 1 <= len(args["reason"]) <= 256:
                raise Rejection("args", "bad arguments: reason must be 1..256 characters")
        elif c.name == "lane.mode":
            _exact(args, ("lane", "mode"))
            self._lane(args["lane"])
            _choice(args, "mode", ("auto", "manual", "closed"))
        elif c.name in ("rebirth", "config.reload"):
            _exact(args, ())
        elif c.name == "scan.fetch":
            _exact(args, ("scan_id",))
            if not isinstance(args["scan_id"], str) or not _SCAN_ID.match(args["scan_id"]):
                raise Rejection("args", "bad arguments: scan_id must be 1..64 of [A-Za-z0-9_.-]")
        elif c.name == "inspection.result":
            _exact(args, ("transaction_id", "finding", "labels"))
            if not isinstance(args["transaction_id"], str) or not _SCAN_ID.match(args["transaction_id"]):
                raise Rejection("args", "bad arguments: transaction_id must be 1..64 of [A-Za-z0-9_.-]")
            _choice(args, "finding", ("clean", "contraband", "misdeclared"))
            _labels(args["labels"])
        elif c.name == "review.mode":
            _exact(args, ("lane", "mode"))
            self._lane(args["lane"])
            _choice(args, "mode", ("live", "shadow"))
        elif c.name == "review.confirm":
            _allowed(args, ("scan_id", "finding"), ("labels", "regions"))
            if not isinstance(args["scan_id"], str) or not _SCAN_ID.match(args["scan_id"]):
                raise Rejection("args", "bad arguments: scan_id must be 1..64 of [A-Za-z0-9_.-]")
            _choice(args, "finding", ("clean", "anomaly"))
            _labels(args.get("labels", []))
            _regions(args.get("regions", []))
        elif c.name == "samples.upload":
            _allowed(args, (), ("since",))
            if "since" in args:
                try:
                    parse_timestamp(args["since"])
                except (TypeError, ValueError) as err:
                    raise Rejection("args", f"bad arguments: since must be an ISO-8601 UTC time: {err}") from err
        elif c.name == "model.activate":
            _exact(args, ("name", "version", "sha256"))
            if not isinstance(args["name"], str) or not _MODEL_NAME.match(args["name"]):
                raise Rejection("args", "bad arguments: name must be 1..64 of [A-Za-z0-9_.-]")
            if not isinstance(args["version"], str) or not _MODEL_VERSION.match(args["version"]):
                raise Rejection("args", "bad arguments: version must be dotted numbers (e.g. 1.2.0)")
            if not isinstance(args["sha256"], str) or not _SHA256.match(args["sha256"]):
                raise Rejection("args", "bad arguments: sha256 must be 64 lowercase hex digits")

    def _lane(self, lane: Any) -> None:
        known = list(self._target.lane_ids())
        if not isinstance(lane, str) or lane not in known:
            raise Rejection("args", f"bad arguments: unknown lane {lane!r} (lanes: {', '.join(known)})")

    async def _reject_event(self, name: str, request_id: str | None, issued_by: str | None, lane: str | None,
                            rejection: Rejection) -> None:
        detail = {"command": name, "request_id": request_id, "issued_by": issued_by, "kind": rejection.kind,
                  "reason": rejection.reason}
        try:
            # A momentary alarm: active, and no clearing event follows.
            await self._outbox.emit_event(lane=lane if lane in self._target.lane_ids() else None, type="alarm",
                                          code="COMMAND_REJECTED", severity="warning", active=True, detail=detail)
        except OutboxError as err:
            logger.error("cannot record COMMAND_REJECTED: %s", err)  # noqa: TRY400

    # ------------------------------------------------------------------ execution

    async def _execute(self, c: _Command) -> None:
        args = c.args
        if c.name == "barrier":
            action = cast(Literal["open", "close"], args["action"])
            await self._target.barrier_command(lane=args["lane"], action=action, reason=args["reason"],
                                               operator=c.issued_by)
        elif c.name == "lane.mode":
            mode = cast(Literal["auto", "manual", "closed"], args["mode"])
            await self._target.lane_mode_command(lane=args["lane"], mode=mode)
        elif c.name == "config.reload":
            await self._target.reload_config()
        elif c.name == "rebirth":
            if self._rebirth is None or not await self._rebirth():
                raise CommandRefused("not connected")
        elif c.name == "scan.fetch":
            await self._scan_fetch(args["scan_id"])
        elif c.name == "inspection.result":
            if self._archive is None:
                raise CommandRefused("no scan archive on this gate")
            archive = self._archive
            await asyncio.to_thread(lambda: archive.store_sample(
                transaction_id=args["transaction_id"], finding=args["finding"], labels=list(args["labels"]),
                request_id=c.request_id, issued_by=c.issued_by))
        elif c.name == "review.mode":
            await self._target.review_mode_command(lane=args["lane"], mode=args["mode"], operator=c.issued_by)
        elif c.name == "review.confirm":
            if self._archive is None:
                raise CommandRefused("no scan archive on this gate")
            archive = self._archive
            await asyncio.to_thread(lambda: archive.store_confirmation(
                scan_id=args["scan_id"], finding=args["finding"], labels=list(args.get("labels", [])),
                regions=list(args.get("regions", [])), request_id=c.request_id, issued_by=c.issued_by))
        elif c.name == "samples.upload":
            await self._target.samples_upload_command(since=args.get("since"), operator=c.issued_by)
        elif c.name == "model.activate":
            await self._target.model_activate_command(name=args["name"], version=args["version"],
                                                      sha256=args["sha256"], operator=c.issued_by)

    async def _scan_fetch(self, scan_id: str) -> None:
        if self._archive is None or not self._archive.enabled:
            raise CommandRefused("scan archiving is switched off on this gate")
        render = self._render_png or _default_renderer()
        archive = self._archive

        def work() -> bytes:
            return render(archive.load_scan(scan_id))

        png = await asyncio.to_thread(work)
        await self._outbox.enqueue_image(scan_id, png)

    async def _reply(self, request_id: str | None, *, ok: bool, error: str | None) -> Mapping[str, Any]:
        reply = {"request_id": request_id, "ok": ok, "error": error, "ts": utc_timestamp(self._wall_clock())}
        try:
            await self._outbox.enqueue_reply(reply)
        except OutboxError as err:
            logger.error("command reply for %r lost: %s", request_id, err)  # noqa: TRY400
        return reply


def _default_renderer() -> Callable[[Scan], bytes]:
    try:
        from inference.preview import render_image_png  # OpenCV: imported only when needed
    except ImportError as err:
        raise CommandRefused("image rendering is not available on this gate") from err
    return cast(Callable[[Scan], bytes], render_image_png)


def _parse(payload: bytes) -> dict[str, Any]:
    if len(payload) > _MAX_PAYLOAD:
        raise Rejection("malformed", f"malformed command: payload larger than {_MAX_PAYLOAD} bytes")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise Rejection("malformed", f"malformed JSON: {err}") from err
    if not isinstance(obj, dict):
        raise Rejection("malformed", "malformed command: not a JSON object")
    return obj


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 128 else None


def _exact(args: Mapping[str, Any], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in args]
    extra = sorted(set(args) - set(names))
    if missing:
        raise Rejection("args", f"bad arguments: missing {', '.join(missing)}")
    if extra:
        raise Rejection("args", f"bad arguments: unexpected {', '.join(extra)}")


def _choice(args: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if args[name] not in allowed:
        raise Rejection("args", f"bad arguments: {name} must be one of {', '.join(allowed)} (got {args[name]!r})")


def _allowed(args: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    missing = [n for n in required if n not in args]
    extra = sorted(set(args) - set(required) - set(optional))
    if missing:
        raise Rejection("args", f"bad arguments: missing {', '.join(missing)}")
    if extra:
        raise Rejection("args", f"bad arguments: unexpected {', '.join(extra)}")


def _labels(labels: Any) -> None:
    if (not isinstance(labels, list) or len(labels) > 64
            or not all(isinstance(x, str) and _LABEL.match(x) for x in labels)):
        raise Rejection("args", "bad arguments: labels must be a list of up to 64 short strings")


def _regions(regions: Any) -> None:
    """Boxes in scan pixels, as the training's label files hold them: {x, y, w, h, label}."""
    if not isinstance(regions, list) or len(regions) > _MAX_REGIONS:
        raise Rejection("args", f"bad arguments: regions must be a list of up to {_MAX_REGIONS} boxes")
    for r in regions:
        if (not isinstance(r, dict) or set(r) != {"x", "y", "w", "h", "label"}
                or not all(type(r[k]) is int and 0 <= r[k] <= 1_000_000 for k in ("x", "y", "w", "h"))
                or r["w"] < 1 or r["h"] < 1 or not isinstance(r["label"], str) or not _LABEL.match(r["label"])):
            raise Rejection("args", "bad arguments: each region needs integer x, y >= 0, w, h >= 1 and a label")
