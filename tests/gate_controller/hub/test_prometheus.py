"""The telemetry payload in the Prometheus text format (prometheus_client's exposition)."""

from __future__ import annotations

from gate_controller.hub.prometheus import prometheus_text


def test_prometheus_text_escapes_labels() -> None:
    payload = {"uptime_s": 1.0, "boot_id": 1, "links": {'we"ird\\link': "up"}, "lanes": {}, "counters": {},
               "backlog": {"pending": 0, "oldest_age_s": None},
               "inference": {"p50_ms": None, "p95_ms": None, "count": 0},
               "cpu_percent": 0.0, "rss_mb": 1.0, "disk_free_mb": 1.0}
    text = prometheus_text(payload)
    assert 'smartgate_link_up{link="we\\"ird\\\\link"} 1' in text
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    # Unknown figures (null in telemetry) are left out, not reported as 0.
    assert not any(line.startswith(("smartgate_backlog_oldest_age_seconds", "smartgate_inference_latency_ms"))
                   for line in samples)
