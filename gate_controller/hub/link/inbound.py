"""What the hub sends the gate: signed release notices, commands and model packages, each handled off the
network thread.

The link routes a message here by topic; one worker per kind takes them in order, so a slow notice
store or a long command never blocks paho's thread or the publisher.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from gate_controller.core.errors import OutboxError
from gate_controller.core.timestamps import WallClock
from gate_controller.hub.link.interfaces import CommandHandler, ModelSink, NoticeSink
from gate_controller.hub.outbox import Outbox

logger = logging.getLogger(__name__)


class Inbound:
    """Release notices (``{prefix}/{site}/release/+``), commands (``{root}/cmd/+``) and model packages
    (``{prefix}/{site}/models/+/+``, only with a model sink)."""

    def __init__(self, outbox: Outbox, *, notice_prefix: str, cmd_prefix: str, notices: NoticeSink | None,
                 notice_key: bytes | None, commands: CommandHandler | None, wall_clock: WallClock,
                 model_prefix: str | None = None, models: ModelSink | None = None) -> None:
        self.outbox = outbox
        self.notice_prefix = notice_prefix
        self.cmd_prefix = cmd_prefix
        self._notices = notices
        self._notice_key = notice_key
        self._commands = commands
        self._wall_clock = wall_clock
        self._notice_queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._command_queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.model_prefix = model_prefix if models is not None else None
        self._models = models
        self._model_queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

    def route(self, topic: str, payload: bytes) -> bool:
        """Queue a notice or a command; False when ``topic`` is neither."""
        if topic.startswith(self.notice_prefix):
            self._notice_queue.put_nowait((topic[len(self.notice_prefix):], payload))
        elif topic.startswith(self.cmd_prefix):
            self._command_queue.put_nowait((topic[len(self.cmd_prefix):], payload))
        elif self.model_prefix is not None and topic.startswith(self.model_prefix):
            if payload:  # an empty retained message is the hub withdrawing a package: nothing to install
                self._model_queue.put_nowait((topic[len(self.model_prefix):], payload))
        else:
            return False
        return True

    def close(self) -> None:
        """Let both workers finish what is queued and return."""
        self._notice_queue.put_nowait(None)
        self._command_queue.put_nowait(None)
        self._model_queue.put_nowait(None)

    async def notice_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while (item := await self._notice_queue.get()) is not None:
            container, payload = item
            if self._notices is None or self._notice_key is None:
                logger.debug("hub link: no notice store; ignoring notice for %s", container)
                continue
            try:
                outcome = await loop.run_in_executor(None, partial(
                    self._notices.apply, container, payload, key=self._notice_key, now=self._wall_clock()))
            except Exception:
                logger.exception("hub link: release notice for %s not applied", container)
                continue
            if str(getattr(outcome, "result", "")) == "rejected":
                # A forged or malformed notice is a security-relevant fact the hub should see,
                # like a rejected command; it changes nothing on the gate.
                detail = {"container": container, "reason": str(getattr(outcome, "detail", None) or "rejected"),
                          "bytes": len(payload)}
                try:
                    await self.outbox.emit_event(lane=None, type="alarm", code="NOTICE_REJECTED",
                                                 severity="warning", active=True, detail=detail)
                except OutboxError as err:
                    logger.error("hub link: cannot record NOTICE_REJECTED: %s", err)  # noqa: TRY400

    async def command_worker(self) -> None:
        while (item := await self._command_queue.get()) is not None:
            name, payload = item
            if self._commands is None:
                logger.warning("hub link: command %s received but no command handler is configured", name)
                continue
            try:
                await self._commands.handle(name, payload)
            except Exception:
                logger.exception("hub link: command %s failed", name)

    async def model_worker(self) -> None:
        while (item := await self._model_queue.get()) is not None:
            rest, payload = item
            if self._models is None:
                continue
            name, _, version = rest.partition("/")
            try:
                await self._models.receive_package(name, version, payload)
            except Exception:
                logger.exception("hub link: model package %s not handled", rest)
