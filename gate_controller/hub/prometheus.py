"""The telemetry figures for Prometheus: a collector over one telemetry payload and the /metrics app.

The figures are those of one `Telemetry.collect` payload, so the endpoint and the MQTT telemetry
never disagree. prometheus_client renders them (text exposition format 0.0.4); the endpoint is an
aiohttp application on the daemon's event loop, because collecting reads the outbox there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from gate_controller.core.errors import OutboxError

__all__ = ["CONTENT_TYPE", "TelemetryCollector", "metrics_app", "prometheus_text"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""``text/plain; version=0.0.4; charset=utf-8``: what `prometheus_text` renders."""


def _metric_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else f"_{out}"


def _family(family: GaugeMetricFamily | CounterMetricFamily,
            samples: Iterable[tuple[Iterable[str], Any]]) -> Metric:
    """``family`` with one sample per (label values, value); unknown (None) values are left out."""
    for labels, value in samples:
        if value is not None:
            family.add_metric(list(labels), float(value))
    return family


class TelemetryCollector(Collector):
    """The metrics of one telemetry payload (and, when known, whether the hub link is up)."""

    def __init__(self, payload: Mapping[str, Any], *, hub_connected: bool | None = None) -> None:
        self._payload = payload
        self._hub_connected = hub_connected

    def collect(self) -> Iterator[Metric]:
        p = self._payload
        yield _family(GaugeMetricFamily("smartgate_uptime_seconds", "Seconds since the daemon started."),
                      [((), p["uptime_s"])])
        yield _family(GaugeMetricFamily("smartgate_boot_id", "Boot counter of the daemon."), [((), p["boot_id"])])
        yield _family(GaugeMetricFamily("smartgate_link_up", "1 when the link is up.", labels=["link"]),
                      [((k,), int(v == "up")) for k, v in sorted(p["links"].items())])
        yield _family(GaugeMetricFamily("smartgate_lane_state", "1 for the current state of each lane.",
                                        labels=["lane", "state"]),
                      [((k, str(v)), 1) for k, v in sorted(p["lanes"].items())])
        yield _family(CounterMetricFamily("smartgate_events", "Daemon counters since start, by name.",
                                          labels=["name"]),
                      [((_metric_name(k),), v) for k, v in sorted(p["counters"].items())])
        yield _family(GaugeMetricFamily("smartgate_backlog_pending", "Messages waiting in the outbox for a PUBACK."),
                      [((), p["backlog"]["pending"])])
        yield _family(GaugeMetricFamily("smartgate_backlog_oldest_age_seconds",
                                        "Age of the oldest message in the outbox."),
                      [((), p["backlog"]["oldest_age_s"])])
        inference = p["inference"]
        yield _family(GaugeMetricFamily("smartgate_inference_latency_ms", "Image review latency quantiles.",
                                        labels=["quantile"]),
                      [(("0.5",), inference["p50_ms"]), (("0.95",), inference["p95_ms"])])
        yield _family(CounterMetricFamily("smartgate_inference", "Image reviews run since start."),
                      [((), inference["count"])])
        lanes = sorted((inference.get("lanes") or {}).items())
        for key, help_text in (
            ("suspect_share", "Share of the lane's recent reviewed scans called suspect."),
            ("unavailable_share", "Share of the lane's recent reviewed scans without a verdict."),
            ("input_distance", "Distance of the lane's recent input statistics from the model's envelope."),
            ("window", "Reviewed scans the lane's review figures are computed over."),
        ):
            yield _family(GaugeMetricFamily(f"smartgate_review_{key}", help_text, labels=["lane"]),
                          [((lane,), v.get(key)) for lane, v in lanes])
        yield _family(GaugeMetricFamily("smartgate_model_drift", "1 while the lane's MODEL_DRIFT alarm is raised.",
                                        labels=["lane"]),
                      [((lane,), int(bool(v.get("drift")))) for lane, v in lanes])
        yield _family(GaugeMetricFamily("smartgate_cpu_percent", "Process CPU use."), [((), p["cpu_percent"])])
        yield _family(GaugeMetricFamily("smartgate_rss_megabytes", "Process resident memory."),
                      [((), p["rss_mb"])])
        yield _family(GaugeMetricFamily("smartgate_disk_free_megabytes", "Free disk space where the state lives."),
                      [((), p["disk_free_mb"])])
        if self._hub_connected is not None:
            yield _family(GaugeMetricFamily("smartgate_hub_connected",
                                            "1 while the MQTT session with the hub is up."),
                          [((), int(self._hub_connected))])


def prometheus_text(payload: Mapping[str, Any], *, hub_connected: bool | None = None) -> str:
    """The telemetry payload in the Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(payload, hub_connected=hub_connected))
    return generate_latest(registry).decode("utf-8")


def metrics_app(render: Callable[[], Awaitable[str]]) -> web.Application:
    """``GET /metrics`` (and ``/``) answered with ``render()``; HEAD too, anything else 404 or 405."""

    async def metrics(request: web.Request) -> web.Response:
        try:
            text = await render()
        except OutboxError as err:
            logger.warning("metrics request failed: %s", err)
            raise web.HTTPServiceUnavailable(text=f"{err}\n") from err
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", metrics)
    return app
