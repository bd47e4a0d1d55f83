"""Periodic health figures (MQTT contract section 6) and the same figures for Prometheus.

Every ``mqtt.telemetry_interval_s`` one telemetry message is queued through the outbox (QoS 0,
kept in the backlog within ``backlog.max_telemetry`` while the hub is unreachable). The daemon
provides what only it knows (links, lane states, counters, inference latencies) through a
snapshot callable; this module adds the process figures (uptime, CPU, RSS, free disk) and the
backlog. With ``telemetry.prometheus_port`` set, an HTTP endpoint on ``telemetry.prometheus_host``
serves ``/metrics`` in the Prometheus text format (`gate_controller.hub.prometheus`), computed from
the same `Telemetry.collect` so the two never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from gate_controller.core.errors import OutboxError
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from gate_controller.hub.outbox import Outbox
from gate_controller.hub.prometheus import metrics_app, prometheus_text

__all__ = ["Telemetry", "TelemetrySnapshot", "prometheus_text"]

logger = logging.getLogger(__name__)

MB: Final = 1024 * 1024


@dataclass(frozen=True)
class TelemetrySnapshot:
    """The daemon's part of a telemetry message."""

    links: Mapping[str, str] = field(default_factory=dict)
    """Link name -> ``"up"``/``"down"`` (firmware links, PLCs, ...)."""
    lanes: Mapping[str, str] = field(default_factory=dict)
    """Lane id -> one word: the mode when it is not automatic, else the phase (deprecated on the wire)."""
    lane_status: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Lane id -> ``{"phase": ..., "mode": ...}``, the passage phase and the lane mode apart."""
    counters: Mapping[str, int] = field(default_factory=dict)
    """Monotonic counters since start (transactions by action, scans, OCR reads, ...)."""
    inference_p50_ms: float | None = None
    inference_p95_ms: float | None = None
    inference_count: int = 0
    review_lanes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Lane id -> rolling ``window``, ``suspect_share``, ``unavailable_share``, ``input_distance`` and
    ``drift`` of its recent reviews (`gate_controller.lifecycle.drift.DriftMonitor`)."""


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident_pages = int(fh.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        # ru_maxrss is the peak (KiB on Linux), a reasonable stand-in where /proc is missing.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Telemetry:
    """Collects, publishes and serves the gate's health figures."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], TelemetrySnapshot],
        outbox: Outbox,
        publish: Callable[[Mapping[str, Any]], Awaitable[object]],
        interval_s: float,
        disk_path: str | Path,
        hub_connected: Callable[[], bool] | None = None,
        prometheus_host: str = "127.0.0.1",
        prometheus_port: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: WallClock = utc_now,
    ) -> None:
        self._snapshot = snapshot
        self._outbox = outbox
        self._publish = publish
        self.interval_s = interval_s
        self._disk_path = Path(disk_path)
        self._hub_connected = hub_connected
        self._host = prometheus_host
        self._port = prometheus_port
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self._cpu_mark = (clock(), _cpu_seconds())
        self._cpu_percent = 0.0
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Task[None] | None = None
        self.published = 0

    @property
    def prometheus_port(self) -> int | None:
        """The bound port (useful when configured as 0 in tests), None when the endpoint is off."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    def _cpu(self) -> float:
        now, cpu = self._clock(), _cpu_seconds()
        then, cpu_then = self._cpu_mark
        if now - then >= 1.0:
            self._cpu_percent = max(0.0, (cpu - cpu_then) / (now - then) * 100.0)
            self._cpu_mark = (now, cpu)
        return round(self._cpu_percent, 1)

    async def collect(self) -> dict[str, Any]:
        """One telemetry payload, exactly as the contract spells it."""
        snap = self._snapshot()
        backlog = await self._outbox.stats()
        try:
            disk_free = shutil.disk_usage(self._disk_path).free / MB
        except OSError:
            disk_free = 0.0
        return {
            "ts": utc_timestamp(self._wall_clock()),
            "uptime_s": round(self._clock() - self._started, 1),
            "boot_id": self._outbox.boot_id,
            "links": dict(snap.links),
            "lanes": dict(snap.lanes),
            "lane_status": {lane: {"phase": str(v["phase"]), "mode": str(v["mode"])}
                            for lane, v in snap.lane_status.items()},
            "counters": {k: int(v) for k, v in snap.counters.items()},
            "backlog": {"pending": backlog.pending,
                        "oldest_age_s": None if backlog.oldest_age_s is None else round(backlog.oldest_age_s, 1)},
            "inference": {"p50_ms": snap.inference_p50_ms, "p95_ms": snap.inference_p95_ms,
                          "count": snap.inference_count,
                          "lanes": {lane: dict(v) for lane, v in snap.review_lanes.items()}},
            "cpu_percent": self._cpu(),
            "rss_mb": round(_rss_mb(), 1),
            "disk_free_mb": round(disk_free, 1),
        }

    async def publish_once(self) -> dict[str, Any]:
        payload = await self.collect()
        await self._publish(payload)
        self.published += 1
        return payload

    async def run(self) -> None:
        """Publish every interval (and serve /metrics if configured) until `stop`."""
        await self.start_server()
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                    async with asyncio.timeout(self.interval_s):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    break
                try:
                    await self.publish_once()
                except OutboxError as err:
                    logger.error("telemetry not queued: %s", err)  # noqa: TRY400 - expected failure mode
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()
            closing, self._closing = self._closing, None
            if closing is not None:
                await closing

    async def start_server(self) -> None:
        """Open the /metrics endpoint now (idempotent; `run` opens it too). ``OSError`` if the
        port is taken: a configured endpoint that cannot listen is a startup failure."""
        if self._port is None or self._runner is not None:
            return
        runner = web.AppRunner(metrics_app(self._metrics_text), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("prometheus metrics on http://%s:%d/metrics", self._host, self.prometheus_port)

    def stop(self) -> None:
        """End `run` and close the /metrics endpoint (also when `run` never started)."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            # Closing is a coroutine; it runs on the loop and `run`, if it is running, waits for it.
            self._closing = asyncio.get_running_loop().create_task(runner.cleanup())

    async def _metrics_text(self) -> str:
        payload = await self.collect()
        connected = self._hub_connected() if self._hub_connected is not None else None
        return prometheus_text(payload, hub_connected=connected)
