"""`smartgate run`: the unattended daemon that composes links, lanes, decisions and the hub link.

Ownership is explicit: every firmware link, lane (with its PLC driver), the hub session, the
telemetry loop and the watchdog is one named task in one `asyncio.TaskGroup`. Blocking work
(image review, SQLite fsyncs, archive writes) runs in the review worker process or worker
threads, never on the loop. A dead link never blocks another: each connects (and reconnects) in
its own task, in the background.

Shutdown (SIGTERM) puts every lane in a safe state first (the lanes lower a raised barrier only
with the safety loop clear), then publishes the clean ``offline`` birth, flushes what it can and
closes storage last. SIGHUP (and the hub's ``config.reload``) validates the new file and applies
what can change at run time; anything else keeps the running configuration (a reload never
leaves half a configuration applied).

Why one module of about 700 lines: `GateDaemon` is the composition root. It owns the one
`TaskGroup` and every object in it, and its methods are the surface the hub's commands, the
console, the control socket and systemd call into (commands, reload, status and telemetry
snapshots). Each subsystem it composes lives in its own subpackage; splitting the root itself would
spread the ownership of those tasks over several classes sharing private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from firmware_bridge.events import FaultEvent, LinkStateEvent, OcrEvent, ScanEvent
from firmware_bridge.link import GfpLink
from firmware_bridge.settings import LinkSettings
from gate_controller import __version__
from gate_controller.config import GateConfig, LinkConfig, load_config, read_secret, resolve_secret_path
from gate_controller.console.watch import GateWatch, WatchedDecider
from gate_controller.core.errors import ConfigError
from gate_controller.core.ports import CommandRefused, OcrObservation, ScanObservation
from gate_controller.decision.decider import GateDecider
from gate_controller.decision.notices import NoticeStore
from gate_controller.hub.archive import ScanArchive
from gate_controller.hub.commands import CommandDispatcher, LocalResult, ReplayCache
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from gate_controller.hub.telemetry import Telemetry, TelemetrySnapshot
from gate_controller.lane.machine import Lane
from gate_controller.lane.modes import LaneModeStore
from gate_controller.lifecycle.drift import DriftMonitor
from gate_controller.lifecycle.fleet import ModelManager
from gate_controller.lifecycle.modes import ReviewModes
from gate_controller.lifecycle.upload import SampleUploader
from gate_controller.plc.driver import PlcBusRegistry
from gate_controller.service import sdnotify
from gate_controller.service.control import ControlServer
from gate_controller.service.instance import InstanceLock, InstanceRunning
from gate_controller.service.logs import bind, configure_logging
from inference.package import PackageStore
from inference.preview import render_image_png
from inference.result import ReviewResult
from inference.worker import ReviewWorker

if TYPE_CHECKING:
    from gate_controller.console.app import ConsoleServer

__all__ = ["EX_CONFIG", "EX_TEMPFAIL", "GateDaemon", "link_settings", "load_gate_config", "run_daemon"]

log = logging.getLogger(__name__)

EX_CONFIG = 78
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
_TICK_S = 0.25
_LOOP_STALL_S = 2.0
"""The loop is wedged when the ticker has not run for this long (heartbeat and watchdog stop)."""
_MODEL_POLL_S = 2.0
"""How often the model store is checked for switches made with `smartgate model activate|rollback`."""


def link_settings(config: LinkConfig) -> LinkSettings:
    """The bridge's settings for a configured link (the bridge never reads our config)."""
    return LinkSettings(
        name=config.name, url=config.url, baudrate=config.baudrate, parity=config.parity,
        bytesize=config.bytesize, stopbits=config.stopbits, heartbeat_interval_s=config.heartbeat_interval_s,
        link_timeout_s=config.link_timeout_s, partial_frame_timeout_s=config.partial_frame_timeout_s,
        reconnect_initial_s=config.reconnect_initial_s, reconnect_max_s=config.reconnect_max_s,
        resend_rounds=config.resend_rounds, resend_interval_s=config.resend_interval_s,
        scan_timeout_s=config.scan_timeout_s,
    )


# Keys whose change needs a restart: they define identities, storage and connections that
# outlive one decision. Everything else (policy, thresholds, lane timeouts, PLC settings,
# logging) is applied on reload.
_RESTART_KEYS = ("site", "gate", "links", "mqtt", "storage", "control", "telemetry", "console")


class GateDaemon:
    def __init__(self, config: GateConfig, config_path: Path, *, mqtt_url: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._mqtt_url = mqtt_url
        self.early_stop: list[str] = []
        """Stop signals received between the state lock and the loop's own handlers (`run_daemon`)."""
        """Replaces the file's ``mqtt.url``, also on reload (`smartgate run --mqtt-url`)."""
        self.config_dir = config_path.resolve().parent
        self._clock = time.monotonic
        self._started = self._clock()
        self._last_tick = self._clock()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._lanes: dict[str, Lane] = {}
        self._links: dict[str, GfpLink] = {}
        self._link_lane: dict[str, str] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.counters: dict[str, int] = {
            "ocr_reads": 0, "scans_complete": 0, "scans_incomplete": 0, "firmware_faults": 0,
            "reloads": 0, "reload_failures": 0,
        }
        self.exit_code = 0
        # Built in run(), after storage opens.
        self.outbox: Outbox | None = None
        self.hub: HubLink | None = None
        self.decider: GateDecider | None = None
        self.reviewer: ReviewWorker | None = None
        self._lane_modes: LaneModeStore | None = None
        self.watch: GateWatch | None = GateWatch(size=config.console.feed_size) if config.console.listen else None
        """What the technician console shows; None while the console is off."""
        self.review_modes: ReviewModes | None = None
        self.models: ModelManager | None = None
        self.drift: DriftMonitor | None = None
        self.uploader: SampleUploader | None = None

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        config = self.config
        sdnotify.status("starting")
        state_dir = config.storage.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        outbox = await asyncio.to_thread(
            Outbox.open, config.storage.outbox_path, root_topic=config.root_topic, site=config.site,
            gate=config.gate, limits=config.mqtt.backlog,
        )
        self.outbox = outbox
        notices = await asyncio.to_thread(NoticeStore, config.storage.notices_path)
        archive = ScanArchive(config.storage.archive_dir, config.storage.samples_dir,
                              max_mb=config.storage.archive_max_mb, enabled=config.storage.archive_scans)
        outbox.set_archive_hook(archive.record_transaction)
        if self.watch is not None:
            outbox.add_observer(self.watch.on_message)
        replay = await asyncio.to_thread(ReplayCache, state_dir / "replay.sqlite3",
                                         window_s=config.mqtt.replay_window_s)
        policy = config.policy
        store = await asyncio.to_thread(PackageStore, config.storage.models_dir)
        fallback_model = config.inference.model_path
        keys = [resolve_secret_path(p, base_dir=self.config_dir) for p in config.inference.trusted_keys]
        # The worker checks a package's signature too before loading it: a package altered on disk
        # after it was installed is refused and the previous model keeps serving.
        reviewer = ReviewWorker(
            store.active_path() or fallback_model, config.inference.threads, config.inference.timeout_s,
            suspect_threshold=policy.suspect_threshold, not_empty_threshold=policy.not_empty_threshold,
            opaque_area_m2=policy.opaque_area_m2, trusted_keys=keys,
        )
        self.reviewer = reviewer
        self.models = ModelManager(
            store=store, trusted_keys=keys,
            reviewer=reviewer, emit=outbox.emit_event, samples_dir=config.storage.samples_dir,
            canary=config.inference.canary, fallback_model=fallback_model)
        self.drift = DriftMonitor(config.inference.drift, emit=outbox.emit_event,
                                  model_path=lambda: reviewer.model_path)
        self.review_modes = ReviewModes(config.storage.review_modes_path, _review_modes(config))
        await asyncio.to_thread(self.review_modes.load)
        decider = GateDecider(policy=policy, notices=notices, reviewer=reviewer, archive_scan=archive.store_scan,
                              preview_sink=self._publish_preview,
                              preview_max_width=config.inference.preview_max_width,
                              review_shadow=self.review_modes.shadow, on_review=self._on_review)
        self.decider = decider
        buses = PlcBusRegistry()
        self._lane_modes = LaneModeStore(config.storage.lane_modes_path)
        hub_modes = await asyncio.to_thread(self._lane_modes.load, [lane.id for lane in config.lanes])
        for lane_config in config.lanes:
            lane = Lane(lane_config, site=config.site, gate=config.gate,
                        decider=WatchedDecider(decider, self.watch) if self.watch is not None else decider,
                        journal=outbox, healthy=self._pipeline_healthy, buses=buses,
                        hub_mode=hub_modes[lane_config.id])
            self._lanes[lane.id] = lane
            for name in lane_config.links:
                self._link_lane[name] = lane.id
        for link_config in config.links:
            self._links[link_config.name] = GfpLink(link_settings(link_config))
        dispatcher = CommandDispatcher(
            key=_read_key(config, self.config_dir), target=self, outbox=outbox, replay=replay, archive=archive,
            clock_skew_s=config.mqtt.clock_skew_s, render_png=render_image_png,
        )
        hub = HubLink.from_config(config, outbox=outbox, birth=self._birth, commands=dispatcher, notices=notices,
                                  models=self.models,
                                  config_dir=self.config_dir)
        self.hub = hub
        self.uploader = SampleUploader(samples_dir=config.storage.samples_dir, outbox=outbox,
                                       state_path=config.storage.uploads_path, hub_connected=lambda: hub.connected,
                                       interval_s=config.inference.sample_upload_interval_s)
        telemetry = Telemetry(
            snapshot=self._telemetry_snapshot, outbox=outbox, publish=hub.publish_telemetry,
            interval_s=config.mqtt.telemetry_interval_s, disk_path=state_dir,
            hub_connected=lambda: hub.connected, prometheus_host=config.telemetry.prometheus_host,
            prometheus_port=config.telemetry.prometheus_port,
        )
        control = ControlServer(config.control.socket_path, self.status_snapshot)
        console = self._console(dispatcher)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.early_stop:  # a stop signal that came before the loop's handlers were in place
            self.request_stop(self.early_stop[0])
        try:
            await control.start()
            await telemetry.start_server()
            if console is not None:
                await self._start_console(console)
            async with asyncio.TaskGroup() as tg:
                self._spawn(tg, self._ticker(), "ticker")
                self._spawn(tg, self._start_reviewer(), "reviewer-start")
                self._spawn(tg, self._watch_models(), "models")
                self._spawn(tg, self.uploader.run(), "sample-upload")
                for name, link in self._links.items():
                    self._spawn(tg, link.run(), f"link:{name}")
                    self._spawn(tg, self._route(link), f"route:{name}")
                for lane_id, lane in self._lanes.items():
                    self._spawn(tg, self._run_lane(lane), f"lane:{lane_id}")
                hub_task = self._spawn(tg, hub.run(), "hub")
                telemetry_task = self._spawn(tg, telemetry.run(), "telemetry")
                self._spawn(tg, self._watchdog(), "watchdog")
                for recovered in outbox.recovered:
                    log.warning("transaction %s was open at the last stop: published as cancelled", recovered)
                sdnotify.ready(f"running: {len(self._lanes)} lane(s), {len(self._links)} link(s)")
                log.info("smartgate %s running: site %s gate %s boot %d, lanes %s", __version__, config.site,
                         config.gate, outbox.boot_id, ", ".join(self._lanes))
                await self._stop.wait()
                sdnotify.stopping("stopping: lanes to a safe state")
                await self._shutdown(hub, telemetry, telemetry_task, hub_task)
        except* Exception as group:
            for err in group.exceptions:
                log.critical("daemon task failed: %s", err, exc_info=err)
            self.exit_code = EX_SOFTWARE
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            telemetry.stop()
            if console is not None:
                await console.close()
            await control.close()
            await reviewer.close()
            await asyncio.to_thread(_close_all, outbox, notices, replay)
        return self.exit_code

    def _spawn(self, tg: asyncio.TaskGroup, coro: Any, name: str) -> asyncio.Task[Any]:
        task = tg.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def request_stop(self, why: str = "request") -> None:
        if not self._stop.is_set():
            log.info("stopping (%s)", why)
            self._stop.set()

    async def _shutdown(self, hub: HubLink, telemetry: Telemetry, telemetry_task: asyncio.Task[Any],
                        hub_task: asyncio.Task[Any]) -> None:
        # 1. Lanes first: each finishes or cancels its passage and leaves the lane safe, while the
        #    hub link still runs so the resulting records can go out.
        await asyncio.gather(*(lane.stop() for lane in self._lanes.values()), return_exceptions=True)
        for link in self._links.values():
            link.stop()
        telemetry.stop()
        # 2. Clean `offline` birth and a bounded flush of what is in flight.
        if self.decider is not None:
            await self.decider.close()
        await hub.shutdown(grace_s=5.0)
        for task in self._tasks:
            if not task.done() and task not in (hub_task, telemetry_task):
                task.cancel()

    async def _publish_preview(self, scan_id: str, jpeg: bytes) -> None:
        if self.watch is not None:
            self.watch.on_preview(scan_id, jpeg)
        if self.hub is not None:
            await self.hub.publish_preview(scan_id, jpeg)

    async def _start_reviewer(self) -> None:
        assert self.reviewer is not None
        assert self.outbox is not None
        ok = await self.reviewer.start()
        info = self.reviewer.model_info
        if ok and info is not None:
            await self.outbox.emit_event(lane=None, type="state", code="MODEL_LOADED", severity="info", active=True,
                                         detail={"name": info.name, "version": info.version, "sha256": info.sha256})
            if self.hub is not None:
                await self.hub.rebirth()
        else:
            log.error("image review unavailable: %s (scans will be decided manual)", self.reviewer.last_error)
            await self.outbox.emit_event(lane=None, type="alarm", code="MODEL_LOADED", severity="error",
                                         active=False, detail={"error": self.reviewer.last_error})

    def _on_review(self, lane: str, result: ReviewResult) -> None:
        if self.models is not None:
            self.models.observe(lane, result)
        if self.drift is not None:
            self.drift.observe(lane, result)

    async def _watch_models(self) -> None:
        assert self.models is not None
        while True:
            await asyncio.sleep(_MODEL_POLL_S)
            try:
                await self.models.poll()
            except Exception as err:  # a broken store must not stop the daemon; it is logged each time it changes
                log.error("model store check failed: %s", err)  # noqa: TRY400

    async def _run_lane(self, lane: Lane) -> None:
        with bind(lane=lane.id):
            await lane.run()

    # ------------------------------------------------------------------ console

    def _console(self, dispatcher: CommandDispatcher) -> ConsoleServer | None:
        """The technician console (docs/console.md), reading the daemon through plain accessors."""
        config = self.config.console
        if self.watch is None:
            return None
        # Imported only when the console is on: a gate without it does not carry the web stack.
        from gate_controller.console.app import ConsoleServer, ConsoleSources

        async def command(name: str, args: Mapping[str, Any], issued_by: str, source: str) -> LocalResult:
            return await dispatcher.handle_local(name, args, issued_by=issued_by, source=source)

        async def doctor() -> list[Mapping[str, Any]]:
            from gate_controller.service.doctor import run_checks

            checks = await run_checks(self.config, self.config_dir, timeout_s=5.0, in_daemon=True)
            return [{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks]

        sources = ConsoleSources(
            status=self.status_snapshot, model=self.model_view,
            frames=lambda: {name: link.recent_frames() for name, link in self._links.items()},
            doctor=doctor, identity_settings=lambda: self.config.policy.identity,
            command=command if config.allow_commands else None,
        )
        try:
            return ConsoleServer(config, sources=sources, watch=self.watch, site=self.config.site,
                                 gate=self.config.gate, config_dir=self.config_dir)
        except ConfigError as err:
            log.error("console not started: %s", err)  # noqa: TRY400
            return None

    async def _start_console(self, console: ConsoleServer) -> None:
        try:
            await console.start()
        except (OSError, ValueError) as err:  # the gate runs without its console rather than not at all
            log.error("console cannot listen on %s: %s", self.config.console.listen, err)  # noqa: TRY400

    def model_view(self) -> Mapping[str, Any] | None:
        """The image review model as the console shows it: name, version, sha256, the review mode of
        each lane (live or shadow) and the live watch after an activation (the drift figures are in
        the status snapshot, ``inference.review_lanes``)."""
        info = self.reviewer.model_info if self.reviewer is not None else None
        if info is None:
            return None
        modes = self.review_modes.modes(self._lanes) if self.review_modes is not None else {}
        return {"name": info.name, "version": info.version, "sha256": info.sha256, "modes": dict(modes),
                "watch": self.models.watching if self.models is not None else None}

    # ------------------------------------------------------------------ health

    async def _ticker(self) -> None:
        while True:
            self._last_tick = self._clock()
            await asyncio.sleep(_TICK_S)

    def _pipeline_healthy(self) -> bool:
        """Whether the PLC heartbeat may be written: the loop turns and storage accepts writes.

        A wedged daemon (stalled loop, dead outbox writer) stops the heartbeat, so the PLC's own
        watchdog takes the lane to its safe state (register map rule 6).
        """
        if self._clock() - self._last_tick > _LOOP_STALL_S:
            return False
        outbox = self.outbox
        return outbox is not None and not getattr(outbox, "_closed", False)

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        period = max(0.5, interval / 2)
        progress_window = self.config.control.watchdog_progress_s
        while True:
            await asyncio.sleep(period)
            if self._progressing(progress_window):
                sdnotify.watchdog()
            else:
                log.error("pipeline made no progress for %.0f s: not feeding the systemd watchdog",
                          progress_window)

    def _progressing(self, window_s: float) -> bool:
        if not self._pipeline_healthy():
            return False
        for task in self._tasks:
            if task.done() and task.get_name() != "reviewer-start":
                return False
        assert self.outbox is not None
        try:
            self.outbox.pending_count()
        except Exception:  # an outbox that cannot answer is not progress
            return False
        return self._clock() - self._last_tick < window_s

    # ------------------------------------------------------------------ firmware events

    async def _route(self, link: GfpLink) -> None:
        lane = self._lanes.get(self._link_lane.get(link.name, ""))
        assert self.outbox is not None
        outbox = self.outbox
        async for event in link.events():
            if isinstance(event, OcrEvent):
                self.counters["ocr_reads"] += 1
                if lane is None or event.kind not in ("container", "plate"):
                    continue
                lane.observe_ocr(OcrObservation(
                    kind="container" if event.kind == "container" else "plate", camera=event.camera,
                    text=event.text, confidence=event.confidence, received=event.monotonic, link=link.name,
                    char_confidence=event.char_confidence, iso_type=event.iso_type, read_ms=event.read_ms,
                ))
            elif isinstance(event, ScanEvent):
                self.counters["scans_complete" if event.complete else "scans_incomplete"] += 1
                if lane is None:
                    continue
                lane.observe_scan(ScanObservation(
                    link=link.name, scan_id=event.scan_id, scan_no=event.scan_no, complete=event.complete,
                    columns=event.columns, rows=event.rows, channels=event.channels, sha256=event.sha256,
                    reason=event.reason, scan_end=event.received if event.received is not None else event.monotonic,
                    scan=event.scan, resend_rounds=event.resend_rounds,
                ))
            elif isinstance(event, LinkStateEvent):
                await outbox.emit_event(
                    lane=lane.id if lane else None, type="alarm", code="LINK_DOWN",
                    severity="info" if event.up else "error", active=not event.up,
                    detail={"link": link.name, "reason": event.reason},
                )
                if self.hub is not None:
                    await self.hub.rebirth()
            elif isinstance(event, FaultEvent):
                self.counters["firmware_faults"] += 1
                await outbox.emit_event(
                    lane=lane.id if lane else None, type="alarm", code="FIRMWARE_FAULT",
                    severity=_severity(event.severity), active=event.active,
                    detail={"link": link.name, "code": event.code, "message": event.message},
                )

    # ------------------------------------------------------------------ CommandTarget

    async def barrier_command(self, *, lane: str, action: Literal["open", "close"], reason: str,
                              operator: str) -> None:
        await self._lane(lane).barrier_command(action=action, reason=reason, operator=operator)

    async def lane_mode_command(self, *, lane: str, mode: Literal["auto", "manual", "closed"]) -> None:
        target = self._lane(lane)
        try:
            await target.set_mode(mode)
        finally:  # what the lane holds now, also when it refused part of the change
            if self._lane_modes is not None:
                await asyncio.to_thread(self._lane_modes.save, lane, target.hub_mode)

    async def reload_config(self) -> None:
        await self.reload()

    async def review_mode_command(self, *, lane: str, mode: Literal["live", "shadow"], operator: str) -> None:
        self._lane(lane)
        assert self.review_modes is not None
        assert self.outbox is not None
        modes = self.review_modes
        before = modes.mode(lane)
        changed = await asyncio.to_thread(modes.set, lane, mode)
        log.info("lane %s: review %s -> %s (by %s)", lane, before, mode, operator)
        if changed:
            await self.outbox.emit_event(lane=lane, type="state", code="REVIEW_MODE", severity="info", active=True,
                                         detail={"mode": mode, "previous": before, "by": operator})

    async def samples_upload_command(self, *, since: str | None, operator: str) -> None:
        if self.uploader is None:
            raise CommandRefused("sample upload is not running")
        waiting = await asyncio.to_thread(self.uploader.request, since)
        log.info("sample upload requested by %s: %d sample(s) to send", operator, waiting)

    async def model_activate_command(self, *, name: str, version: str, sha256: str, operator: str) -> None:
        if self.models is None:
            raise CommandRefused("model management is not running")
        await self.models.activate(name, version, sha256, by=operator)

    def lane_ids(self) -> Sequence[str]:
        return tuple(self._lanes)

    def _lane(self, lane_id: str) -> Lane:
        lane = self._lanes.get(lane_id)
        if lane is None:
            raise CommandRefused(f"unknown lane {lane_id!r} (this gate has {', '.join(self._lanes)})")
        return lane

    # ------------------------------------------------------------------ reload

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self._reload_quietly(), name="reload")

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(CommandRefused):
            await self.reload()

    async def reload(self) -> None:
        """Validate the config file again and apply it; on any failure keep the running one."""
        async with self._reload_lock:
            sdnotify.reloading("reloading configuration")
            try:
                await self._reload()
            finally:
                sdnotify.ready("running")

    async def _reload(self) -> None:
        assert self.outbox is not None
        try:
            new = await asyncio.to_thread(load_gate_config, self.config_path, self._mqtt_url)
        except ConfigError as err:
            await self._reload_failed(str(err))
            raise CommandRefused(f"invalid configuration, keeping the running one: {err}") from err
        old = self.config
        changed = [key for key in _RESTART_KEYS if getattr(old, key) != getattr(new, key)]
        if [lane.id for lane in old.lanes] != [lane.id for lane in new.lanes] or any(
            a.links != b.links for a, b in zip(old.lanes, new.lanes, strict=True)
        ):
            changed.append("lanes (ids or links)")
        if changed:
            message = f"changes to {', '.join(changed)} need a restart (systemctl restart smartgate)"
            await self._reload_failed(message)
            raise CommandRefused(message)
        applied: list[Lane] = []
        try:
            for lane_config in new.lanes:
                lane = self._lanes[lane_config.id]
                await lane.apply_config(lane_config)
                applied.append(lane)
        except Exception as err:
            for lane in applied:  # roll back what was applied
                with contextlib.suppress(Exception):
                    await lane.apply_config(old.lane(lane.id))
            await self._reload_failed(f"applying lane configuration failed: {err}")
            raise CommandRefused(f"reload rolled back: {err}") from err
        assert self.decider is not None
        assert self.reviewer is not None
        self.decider.policy = new.policy
        if self.review_modes is not None:
            self.review_modes.reconfigure(_review_modes(new))
        if self.drift is not None:
            self.drift.reconfigure(new.inference.drift)
        if self.models is not None:
            self.models.canary = new.inference.canary
        self.reviewer.suspect_threshold = new.policy.suspect_threshold
        self.reviewer.not_empty_threshold = new.policy.not_empty_threshold
        self.reviewer.opaque_area_m2 = new.policy.opaque_area_m2
        self.reviewer.timeout_s = new.inference.timeout_s
        configure_logging(new.logging.level, new.logging.format)
        self.config = new
        self.counters["reloads"] += 1
        log.info("configuration reloaded from %s", self.config_path)
        await self.outbox.emit_event(lane=None, type="state", code="CONFIG_RELOADED", severity="info", active=True,
                                     detail={"ok": True, "path": str(self.config_path)})

    async def _reload_failed(self, message: str) -> None:
        assert self.outbox is not None
        self.counters["reload_failures"] += 1
        log.error("configuration reload refused: %s", message.replace("\n", "; "))
        await self.outbox.emit_event(lane=None, type="state", code="CONFIG_RELOADED", severity="warning",
                                     active=False, detail={"ok": False, "error": message[:2000]})

    # ------------------------------------------------------------------ views

    def _link_states(self) -> dict[str, Literal["up", "down"]]:
        states: dict[str, Literal["up", "down"]] = {n: "up" if link.is_up else "down"
                                                     for n, link in self._links.items()}
        for lane_id, lane in self._lanes.items():
            states[f"plc:{lane_id}"] = "up" if lane.snapshot().plc_connected else "down"
        return states

    def _birth(self) -> BirthInfo:
        info = self.reviewer.model_info if self.reviewer is not None else None
        model = {"name": info.name, "version": info.version, "sha256": info.sha256} if info is not None else None
        return BirthInfo(lanes=list(self._lanes), links=self._link_states(), model=model)

    def _telemetry_snapshot(self) -> TelemetrySnapshot:
        counters: dict[str, int] = dict(self.counters)
        for lane_id, lane in self._lanes.items():
            for key, value in lane.snapshot().counters.items():
                counters[f"lane_{lane_id}_{key}"] = value
        for name, link in self._links.items():
            c = link.counters()
            for key in ("frames_rx", "bytes_rx", "crc_errors", "lost_frames", "garbage_bytes", "resend_requests",
                        "scans_complete", "scans_incomplete"):
                found = getattr(c, key, None)
                if isinstance(found, int):
                    counters[f"link_{name}_{key}"] = found
        decider = self.decider
        if decider is not None:
            for action, count in decider.decisions.items():
                counters[f"decisions_{action}"] = count
        return TelemetrySnapshot(
            links=self._link_states(),
            lanes={lane_id: lane.snapshot().state for lane_id, lane in self._lanes.items()},
            lane_status={lane_id: {"phase": snap.phase, "mode": snap.mode}
                         for lane_id, snap in ((i, lane.snapshot()) for i, lane in self._lanes.items())},
            counters=counters,
            inference_p50_ms=decider.stats.percentile(0.5) if decider else None,
            inference_p95_ms=decider.stats.percentile(0.95) if decider else None,
            inference_count=decider.stats.count if decider else 0,
            review_lanes=self.drift.all_figures() if self.drift is not None else {},
        )

    def status_snapshot(self) -> Mapping[str, Any]:
        """What `smartgate status` shows (read by the control socket)."""
        hub = self.hub.status() if self.hub is not None else None
        outbox = self.outbox
        decider = self.decider
        return {
            "sw_version": __version__,
            "site": self.config.site,
            "gate": self.config.gate,
            "boot_id": outbox.boot_id if outbox is not None else None,
            "uptime_s": round(self._clock() - self._started, 1),
            "pid": os.getpid(),
            "lanes": {lane_id: lane.snapshot().as_dict() for lane_id, lane in self._lanes.items()},
            "links": {
                name: {"up": link.is_up, "lane": self._link_lane.get(name),
                       "device": link.device.device if link.device is not None else None,
                       "counters": link.counters().as_dict()}
                for name, link in self._links.items()
            },
            "hub": {"connected": hub.connected, "inflight": hub.inflight, "published": hub.published,
                    "acknowledged": hub.acknowledged, "last_error": hub.last_error} if hub is not None else None,
            "backlog": {"pending": outbox.pending_count()} if outbox is not None else None,
            "inference": {
                "count": decider.stats.count if decider else 0,
                "unavailable": decider.stats.unavailable if decider else 0,
                "p50_ms": decider.stats.percentile(0.5) if decider else None,
                "p95_ms": decider.stats.percentile(0.95) if decider else None,
                "model_loaded": self.reviewer is not None and self.reviewer.model_info is not None,
                "worker_pid": self.reviewer.pid if self.reviewer is not None else None,
                "worker_restarts": self.reviewer.restarts if self.reviewer is not None else 0,
                "review_modes": self.review_modes.modes(self._lanes) if self.review_modes is not None else {},
                "model_path": str(self.reviewer.model_path) if self.reviewer is not None else None,
                "model_watch": self.models.watching if self.models is not None else None,
                "review_lanes": self.drift.all_figures() if self.drift is not None else {},
                "sample_upload": {"running": self.uploader.running, "samples": self.uploader.samples_done,
                                  "chunks": self.uploader.chunks_sent} if self.uploader is not None else None,
            },
            "counters": dict(self.counters),
        }


_SEVERITIES: dict[str, Literal["info", "warning", "error", "critical"]] = {
    "warning": "warning", "error": "error", "critical": "critical",
}


def _severity(value: str) -> Literal["info", "warning", "error", "critical"]:
    return _SEVERITIES.get(value, "error")


def _review_modes(config: GateConfig) -> dict[str, Literal["live", "shadow"]]:
    return {lane.id: config.review_mode(lane.id) for lane in config.lanes}


def _read_key(config: GateConfig, config_dir: Path) -> bytes:
    return read_secret(config.mqtt.command_key_file, base_dir=config_dir)


def _close_all(*closables: Any) -> None:
    for item in closables:
        try:
            item.close()
        except Exception as err:  # closing is best effort; each failure is reported
            log.warning("closing %s failed: %s", type(item).__name__, err)


def load_gate_config(config_path: Path, mqtt_url: str | None = None) -> GateConfig:
    """The config file, with ``mqtt.url`` replaced by ``mqtt_url`` when given (validated like the file)."""
    config = load_config(config_path)
    if mqtt_url is None:
        return config
    data = config.model_dump()
    data["mqtt"]["url"] = mqtt_url
    try:
        return GateConfig.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"--mqtt-url {mqtt_url!r}: {err}") from err


def run_daemon(config_path: Path, *, mqtt_url: str | None = None) -> int:
    """Load the config (exit 78 and start nothing when invalid), lock the state directory (exit 75
    when another daemon holds it), then run until stopped."""
    try:
        config = load_gate_config(config_path, mqtt_url)
    except ConfigError as err:
        configure_logging("INFO", "journald" if os.environ.get("JOURNAL_STREAM") else "text")
        for line in str(err).splitlines():
            log.error("%s", line)  # noqa: TRY400  (the located config lines are the message; no traceback)
        return EX_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    try:
        # Secrets are checked before anything starts, like the rest of the config.
        _read_key(config, config_path.resolve().parent)
        if config.mqtt.password_file is not None:
            read_secret(config.mqtt.password_file, base_dir=config_path.resolve().parent)
        if config.console.auth is not None:
            from gate_controller.console.auth import check_hash

            hash_file = config.console.auth.password_hash_file
            check_hash(read_secret(hash_file, base_dir=config_path.resolve().parent), where=str(hash_file))
    except ConfigError as err:
        log.error("%s", err)  # noqa: TRY400
        return EX_CONFIG
    # One daemon per state directory: locked before anything is opened, held until the process exits.
    instance = InstanceLock(config.storage.state_dir)
    try:
        instance.acquire()
    except InstanceRunning as err:
        log.error("%s", err)  # noqa: TRY400
        return EX_TEMPFAIL
    except OSError as err:
        log.error("cannot lock the state directory %s: %s", config.storage.state_dir, err)  # noqa: TRY400
        return EX_CONFIG
    # From here on a SIGTERM/SIGINT (systemd stopping a daemon that is still starting) is a
    # request to stop cleanly, honoured as soon as the loop runs, not an abrupt death.
    early_stop: list[str] = []

    def _early(signum: int, _frame: object) -> None:
        early_stop.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _early) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon = GateDaemon(config, config_path, mqtt_url=mqtt_url)
        daemon.early_stop = early_stop
        return asyncio.run(daemon.run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        instance.release()
