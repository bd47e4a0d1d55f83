"""Periodic health figures (MQTT contract section 6) and the same figures for Prometheus.

Every ``mqtt.telemetry_interval_s`` one telemetry message is queued through the outbox (QoS 0,
kept in the backlog within ``backlog.max_telemetry`` while the hub is unreachable). The daemon
provides what only it knows (links, lane states, counters, inference latencies) through a
snapshot callable; this module adds the process figures (uptime, CPU, RSS, free disk) and the
backlog. With ``telemetry.prometheus_port`` set, a small HTTP endpoint on
``telemetry.prometheus_host`` serves ``/metrics`` in the Prometheus text format, computed from the
same `Telemetry.collect` so the two never disagree.
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

from gate_controller.core.errors import OutboxError
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from gate_controller.hub.outbox import Outbox

__all__ = ["Telemetry", "TelemetrySnapshot", "prometheus_text"]

logger = logging.getLogger(__name__)

MB: Final = 1024 * 1024
_MAX_REQUEST: Final = 8192


@dataclass(frozen=True)
class TelemetrySnapshot:
    """The daemon's part of a telemetry message."""

    links: Mapping[str, str] = field(default_factory=dict)
    """Link name -> ``"up"``/``"down"`` (firmware links, PLCs, ...)."""
    lanes: Mapping[str, str] = field(default_factory=dict)
    """Lane id -> its state machine state."""
    counters: Mapping[str, int] = field(default_factory=dict)
    """Monotonic counters since start (transactions by action, scans, OCR reads, ...)."""
    inference_p50_ms: float | None = None
    inference_p95_ms: float | None = None
    inference_count: int = 0


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
        self._server: asyncio.Server | None = None
        self.published = 0

    @property
    def prometheus_port(self) -> int | None:
        """The bound port (useful when configured as 0 in tests), None when the endpoint is off."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

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
            "counters": {k: int(v) for k, v in snap.counters.items()},
            "backlog": {"pending": backlog.pending,
                        "oldest_age_s": None if backlog.oldest_age_s is None else round(backlog.oldest_age_s, 1)},
            "inference": {"p50_ms": snap.inference_p50_ms, "p95_ms": snap.inference_p95_ms,
                          "count": snap.inference_count},
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
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

    async def start_server(self) -> None:
        """Open the /metrics endpoint now (idempotent; `run` opens it too). ``OSError`` if the
        port is taken: a configured endpoint that cannot listen is a startup failure."""
        if self._port is not None and self._server is None:
            self._server = await asyncio.start_server(self._serve_http, self._host, self._port)
            logger.info("prometheus metrics on http://%s:%d/metrics", self._host, self.prometheus_port)

    def stop(self) -> None:
        """End `run` and close the /metrics endpoint (also when `run` never started)."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", b"GET /metrics\n"
            elif parts[1].split("?", 1)[0] not in ("/metrics", "/"):
                status, body = "404 Not Found", b"GET /metrics\n"
            else:
                payload = await self.collect()
                connected = self._hub_connected() if self._hub_connected is not None else None
                body = prometheus_text(payload, hub_connected=connected).encode("utf-8")
                status = "200 OK"
            headers = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
            writer.write(headers if parts and parts[0] == "HEAD" else headers + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except OutboxError as err:
            logger.warning("metrics request failed: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else f"_{out}"


def prometheus_text(payload: Mapping[str, Any], *, hub_connected: bool | None = None) -> str:
    """The telemetry payload in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            lines.append(f"{name}{labels} {float(value):g}" if isinstance(value, float) else f"{name}{labels} {value}")

    metric("smartgate_uptime_seconds", "gauge", "Seconds since the daemon started.", [("", payload["uptime_s"])])
    metric("smartgate_boot_id", "gauge", "Boot counter of the daemon.", [("", payload["boot_id"])])
    metric("smartgate_link_up", "gauge", "1 when the link is up.",
           [(f'{{link="{_label(k)}"}}', int(v == "up")) for k, v in sorted(payload["links"].items())])
    metric("smartgate_lane_state", "gauge", "1 for the current state of each lane.",
           [(f'{{lane="{_label(k)}",state="{_label(str(v))}"}}', 1) for k, v in sorted(payload["lanes"].items())])
    metric("smartgate_events_total", "counter", "Daemon counters since start, by name.",
           [(f'{{name="{_label(_metric_name(k))}"}}', v) for k, v in sorted(payload["counters"].items())])
    metric("smartgate_backlog_pending", "gauge", "Messages waiting in the outbox for a PUBACK.",
           [("", payload["backlog"]["pending"])])
    metric("smartgate_backlog_oldest_age_seconds", "gauge", "Age of the oldest message in the outbox.",
           [("", payload["backlog"]["oldest_age_s"])])
    inference = payload["inference"]
    metric("smartgate_inference_latency_ms", "gauge", "Image review latency quantiles.",
           [('{quantile="0.5"}', inference["p50_ms"]), ('{quantile="0.95"}', inference["p95_ms"])])
    metric("smartgate_inference_total", "counter", "Image reviews run since start.", [("", inference["count"])])
    metric("smartgate_cpu_percent", "gauge", "Process CPU use.", [("", payload["cpu_percent"])])
    metric("smartgate_rss_megabytes", "gauge", "Process resident memory.", [("", payload["rss_mb"])])
    metric("smartgate_disk_free_megabytes", "gauge", "Free disk space where the state lives.",
           [("", payload["disk_free_mb"])])
    if hub_connected is not None:
        metric("smartgate_hub_connected", "gauge", "1 while the MQTT session with the hub is up.",
               [("", int(hub_connected))])
    return "\n".join(lines) + "\n"
