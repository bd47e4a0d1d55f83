"""The Modbus driver against the real virtual PLC, over Modbus TCP and Modbus RTU on a pty pair."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from gate_controller.config import PlcConfig, PointConfig, PointMap
from gate_controller.core.errors import PlcError, PlcInterlockError, PlcVerificationError
from gate_controller.plc.driver import (
    PlcBusRegistry,
    PlcDriver,
    PlcEvent,
    PlcInputsChanged,
    PlcLinkDown,
    PlcLinkUp,
    running,
)
from gate_controller.plc.sim import Spot, VirtualLanePlc, VirtualPlcServer
from tests.support.plc import PtyPair, fast_plc, run_async, wait_until


def tcp_config(port: int, **overrides: Any) -> PlcConfig:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "poll_hz": 50.0, "timeout_s": 0.2,
                              "heartbeat_interval_s": 0.1, "reconnect_max_s": 0.3, "link_loss_s": 0.4}
    values.update(overrides)
    return PlcConfig.model_validate(values)


def rtu_config(url: str, unit_id: int, **overrides: Any) -> PlcConfig:
    values: dict[str, Any] = {"transport": "rtu", "serial_url": url, "baudrate": 115200, "parity": "N",
                              "unit_id": unit_id, "poll_hz": 20.0, "timeout_s": 0.2,
                              "heartbeat_interval_s": 0.2, "reconnect_max_s": 0.5, "link_loss_s": 0.6}
    values.update(overrides)
    return PlcConfig.model_validate(values)


class Recorder:
    def __init__(self) -> None:
        self.events: list[PlcEvent] = []

    def __call__(self, event: PlcEvent) -> None:
        self.events.append(event)

    def changed(self) -> set[str]:
        out: set[str] = set()
        for event in self.events:
            if isinstance(event, PlcInputsChanged):
                out |= event.changed
        return out

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


@run_async
async def test_polls_with_edges_and_writes_verified_levels_over_tcp() -> None:
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    events = Recorder()
    driver = PlcDriver(tcp_config(port), name="L1", listener=events, buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected, 3.0, "link up")
            assert isinstance(events.events[0], PlcLinkUp)
            image = events.events[0].image
            assert image.inputs["barrier_down"]
            assert image.registers["plc_version"] == plc.version
            truck = await plc.vehicle_arrives()
            await plc.vehicle_to_stop_line(truck)
            await wait_until(lambda: {"loop_entry", "loop_stop"} <= events.changed(), 2.0, "loop edges")
            await driver.raise_barrier()
            assert plc.coils["barrier_raise"] is True
            await wait_until(lambda: driver.image is not None and driver.image.inputs["barrier_up"], 2.0, "up")
            await driver.write_register("display_message", 1)
            assert plc.holding["display_message"] == 1
            # The heartbeat keeps moving while the pipeline is healthy.
            before = plc.holding["host_heartbeat"]
            await asyncio.sleep(0.35)
            assert plc.holding["host_heartbeat"] != before
            plc.move(truck, Spot.GONE)
            await wait_until(lambda: driver.image is not None and not driver.image.inputs["loop_stop"], 2.0, "gone")
            await driver.lower_barrier()
            assert plc.coils["barrier_raise"] is False
            writes = [(w.name, w.value) for w in plc.writes if w.name != "host_heartbeat"]
            assert writes == [("barrier_raise", True), ("display_message", 1), ("barrier_raise", False)]
    finally:
        await server.stop()


@run_async
async def test_refuses_unsafe_writes_before_they_reach_the_plc() -> None:
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    driver = PlcDriver(tcp_config(port), name="L1", buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected, 3.0, "link up")
            await driver.raise_barrier()
            truck = plc.add_vehicle(Spot.UNDER)
            # Right after the vehicle arrives, before any poll could have seen it: the driver's own
            # fresh read inside the bus lock still refuses.
            with pytest.raises(PlcInterlockError, match="loop_safety"):
                await driver.lower_barrier()
            plc.move(truck, Spot.GONE)
            plc.press_estop()
            with pytest.raises(PlcInterlockError, match="estop"):
                await driver.write_coil("light_green", True)
            await driver.write_coil("alarm", True)  # the one coil allowed under estop
            plc.press_estop(False)
            plc.set_key_switch(True)
            with pytest.raises(PlcInterlockError, match="local_manual"):
                await driver.lower_barrier()
            plc.set_key_switch(False)
            written = [(w.name, w.value) for w in plc.writes if w.name != "host_heartbeat"]
            assert written == [("barrier_raise", True), ("alarm", True)]
            plc.freeze_coil("light_green")
            with pytest.raises(PlcVerificationError):
                await driver.write_coil("light_green", True)
            with pytest.raises(ValueError):
                await driver.write_coil("loop_safety", True)
    finally:
        await server.stop()


@run_async
async def test_inverted_points_follow_the_config() -> None:
    points = PointMap(estop=PointConfig(table="discrete_input", address=5, inverted=True),
                      light_red=PointConfig(table="coil", address=2, inverted=True))
    plc = fast_plc(points=points, watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    driver = PlcDriver(tcp_config(port, points=points.model_dump()), name="L1", buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected, 3.0, "link up")
            assert driver.image is not None
            assert driver.image.estop is False
            await driver.write_coil("light_red", True)
            assert plc.coils["light_red"] is True
            assert plc.read_raw("coil", 2, 1) == [False]
            plc.press_estop()
            await wait_until(lambda: driver.image is not None and driver.image.estop, 2.0, "estop seen")
    finally:
        await server.stop()


@run_async
async def test_heartbeat_only_while_the_pipeline_is_healthy() -> None:
    plc = fast_plc(watchdog_s=0.6)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    healthy = [True]
    driver = PlcDriver(tcp_config(port), name="L1", healthy=lambda: healthy[0], buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected and driver.heartbeat_alive, 3.0, "heartbeat")
            await asyncio.sleep(0.8)
            assert not plc.watchdog_tripped
            healthy[0] = False
            wedged_at = time.monotonic()
            await wait_until(lambda: plc.watchdog_tripped, 3.0, "PLC watchdog")
            late = [w for w in plc.writes_of("host_heartbeat") if w.at > wedged_at + 0.25]
            assert late == []
            assert not driver.heartbeat_alive
            healthy[0] = True
            await wait_until(lambda: driver.heartbeat_alive, 2.0, "heartbeat again")
    finally:
        await server.stop()


@run_async
async def test_link_loss_is_reported_within_two_seconds_and_the_driver_reconnects() -> None:
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    events = Recorder()
    # Production timing: 0.5 s timeout, 1.0 s link loss, 10 Hz.
    driver = PlcDriver(tcp_config(port, timeout_s=0.5, link_loss_s=1.0, poll_hz=10.0, reconnect_max_s=2.0),
                       name="L1", listener=events, buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected, 3.0, "link up")
            plc.mute = True  # the PLC stops answering, the TCP connection stays up
            muted = time.monotonic()
            await wait_until(lambda: not driver.connected, 3.0, "link loss")
            assert time.monotonic() - muted < 2.0
            plc.mute = False
            await wait_until(lambda: driver.connected, 4.0, "reconnect")
            await server.go_offline()
            gone = time.monotonic()
            await wait_until(lambda: not driver.connected, 3.0, "link loss (offline)")
            assert time.monotonic() - gone < 2.0
            await asyncio.sleep(1.0)
            await server.go_online()
            back = time.monotonic()
            await wait_until(lambda: driver.connected, 4.0, "reconnect (online)")
            assert time.monotonic() - back < 2.5  # backoff capped at reconnect_max_s, plus one attempt
            assert events.kinds().count("PlcLinkDown") == 2
            assert events.kinds().count("PlcLinkUp") == 3
            others = [e for e in events.events if not isinstance(e, PlcInputsChanged | PlcLinkDown)]
            assert all(isinstance(e, PlcLinkUp) for e in others)
    finally:
        await server.stop()


@run_async
async def test_first_connect_is_retried_until_the_plc_appears() -> None:
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    await server.go_offline()
    driver = PlcDriver(tcp_config(port), name="L1", buses=PlcBusRegistry())
    try:
        async with running(driver):
            await asyncio.sleep(1.0)
            assert not driver.connected
            await server.go_online()
            await wait_until(lambda: driver.connected, 3.0, "first connect")
            await server.go_offline()
            await wait_until(lambda: not driver.connected, 3.0, "down")
            with pytest.raises(PlcError, match="link is down"):
                await driver.write_coil("light_red", True)
    finally:
        await server.stop()


def test_reconnect_backoff_is_capped_and_jittered() -> None:
    driver = PlcDriver(tcp_config(1502, reconnect_max_s=2.0), name="L1", rng=random.Random(7))
    delays = [driver._backoff(n) for n in range(12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[6:]) <= 2.0
    assert min(delays[6:]) >= 1.0
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter: not one fixed value


@run_async
async def test_a_dead_plc_does_not_stall_a_lane_on_another_bus() -> None:
    good, dead = fast_plc(watchdog_s=30.0), fast_plc(watchdog_s=30.0)
    s1, s2 = VirtualPlcServer(good), VirtualPlcServer(dead)
    p1, p2 = await s1.start_tcp(), await s2.start_tcp()
    registry = PlcBusRegistry()
    d1 = PlcDriver(tcp_config(p1), name="L1", buses=registry)
    d2 = PlcDriver(tcp_config(p2), name="L2", buses=registry)
    try:
        async with running(d1), running(d2):
            await wait_until(lambda: d1.connected and d2.connected, 3.0, "both up")
            dead.mute = True
            await wait_until(lambda: not d2.connected, 3.0, "L2 down")
            polls = len(d1.stats.poll_times)
            started = time.monotonic()
            await asyncio.sleep(1.0)
            rate = (len(d1.stats.poll_times) - polls) / (time.monotonic() - started)
            assert rate > 35  # configured 50 Hz; the dead PLC costs it nothing
            t0 = time.monotonic()
            await d1.write_coil("light_red", True)
            assert time.monotonic() - t0 < 0.2
            assert d1.connected
    finally:
        await s1.stop()
        await s2.stop()


@run_async
async def test_rtu_two_units_share_one_bus_and_a_silent_unit_only_costs_its_probes() -> None:
    pair = PtyPair()
    pair.start()
    lane1, lane2 = fast_plc(watchdog_s=30.0), fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer({1: lane1, 2: lane2})
    await server.start_rtu(pair.a, baudrate=115200, parity="N")
    registry = PlcBusRegistry()
    events1 = Recorder()
    d1 = PlcDriver(rtu_config(pair.b, 1), name="L1", listener=events1, buses=registry)
    d2 = PlcDriver(rtu_config(pair.b, 2), name="L2", buses=registry)
    try:
        async with running(d1), running(d2):
            await wait_until(lambda: d1.connected and d2.connected, 5.0, "both up")
            truck = lane1.add_vehicle(Spot.ENTRY)
            await wait_until(lambda: "loop_entry" in events1.changed(), 2.0, "edge on unit 1")
            await d2.write_coil("light_green", True)
            assert lane2.coils["light_green"] is True
            assert lane1.coils["light_green"] is False
            lane1.move(truck, Spot.GONE)
            lane2.mute = True
            await wait_until(lambda: not d2.connected, 3.0, "unit 2 down")
            polls = len(d1.stats.poll_times)
            started = time.monotonic()
            await asyncio.sleep(1.5)
            rate = (len(d1.stats.poll_times) - polls) / (time.monotonic() - started)
            # 20 Hz configured; unit 2's reconnect probes (one timed-out request per backoff)
            # take at most about a quarter of the bus.
            assert rate > 10, rate
            assert d1.connected
            lane2.mute = False
            await wait_until(lambda: d2.connected, 3.0, "unit 2 back")
            await d1.raise_barrier()
            await wait_until(lambda: lane1.inputs["barrier_up"], 2.0, "unit 1 barrier")
    finally:
        await server.stop()
        pair.close()


def test_lanes_on_one_bus_must_agree_on_the_line() -> None:
    registry = PlcBusRegistry()
    first = registry.acquire(rtu_config("/dev/ttyS9", 1))
    assert registry.acquire(rtu_config("/dev/ttyS9", 2)) is first
    with pytest.raises(PlcError, match="disagree"):
        registry.acquire(rtu_config("/dev/ttyS9", 3, baudrate=9600))
    registry.release(first)
    registry.release(first)
    assert first.key not in registry


@run_async
async def test_plc_link_down_event_carries_the_reason() -> None:
    plc = VirtualLanePlc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    events = Recorder()
    driver = PlcDriver(tcp_config(port), name="L1", listener=events, buses=PlcBusRegistry())
    try:
        async with running(driver):
            await wait_until(lambda: driver.connected, 3.0, "up")
            assert server.drop_connections() == 1
            await wait_until(lambda: any(isinstance(e, PlcLinkDown) for e in events.events), 2.0, "down")
            down = next(e for e in events.events if isinstance(e, PlcLinkDown))
            assert "unit 1" in down.reason or "closed" in down.reason
            await wait_until(lambda: driver.connected, 3.0, "reconnected")
    finally:
        await server.stop()
