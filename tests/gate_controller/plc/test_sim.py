"""The virtual lane PLC: lane physics, the register map's own PLC behaviour, and an independent
Modbus master (Debian's mbpoll) reading and writing the default point map over TCP and RTU."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from gate_controller.config import PointConfig, PointMap
from gate_controller.plc.sim import Spot, VirtualLanePlc, VirtualPlcServer
from tests.support.plc import PtyPair, fast_plc, run_async, wait_until

MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install mbpoll)")


def _keep_alive(plc: VirtualLanePlc) -> None:
    plc.write_raw("holding_register", 0, [(plc.holding["host_heartbeat"] + 1) & 0xFFFF])


@run_async
async def test_barrier_travels_within_the_configured_time_with_limit_switches() -> None:
    plc = VirtualLanePlc(travel_s=(0.3, 0.4), tick_s=0.01, watchdog_s=30.0)
    await plc.start()
    try:
        assert plc.inputs["barrier_down"]
        assert not plc.inputs["barrier_up"]
        start = time.monotonic()
        assert plc.write_raw("coil", 0, [True]) is None
        await asyncio.sleep(0.1)
        assert not plc.inputs["barrier_down"]
        assert not plc.inputs["barrier_up"]
        await plc.wait_for(lambda: plc.inputs["barrier_up"], timeout_s=2.0)
        assert 0.28 <= time.monotonic() - start <= 0.6
        plc.write_raw("coil", 0, [False])
        await plc.wait_for(lambda: plc.inputs["barrier_down"], timeout_s=2.0)
        assert plc.registers["barrier_cycles"] == 1
    finally:
        await plc.stop()


@run_async
async def test_interlock_never_lowers_onto_a_vehicle_and_estop_freezes() -> None:
    plc = fast_plc(watchdog_s=30.0)
    await plc.start()
    try:
        plc.write_raw("coil", 0, [True])
        await plc.wait_for(lambda: plc.inputs["barrier_up"], timeout_s=2.0)
        truck = plc.add_vehicle(Spot.UNDER)
        plc.write_raw("coil", 0, [False])
        await asyncio.sleep(0.4)
        assert plc.position == 1.0
        assert plc.inputs["loop_safety"]
        plc.move(truck, Spot.GONE)
        await plc.wait_for(lambda: plc.inputs["barrier_down"], timeout_s=2.0)
        plc.write_raw("coil", 5, [True])
        plc.write_raw("coil", 0, [True])
        await asyncio.sleep(0.05)
        plc.press_estop()
        frozen = plc.position
        await asyncio.sleep(0.3)
        assert plc.position == frozen
        assert 0.0 < frozen < 1.0
        assert plc.coils["scan_permit"] is False
        plc.press_estop(False)
        await plc.wait_for(lambda: plc.inputs["barrier_up"], timeout_s=2.0)
    finally:
        await plc.stop()


@run_async
async def test_watchdog_trips_after_stale_heartbeat_and_clears_on_heartbeat_and_coil_rewrite() -> None:
    plc = fast_plc(watchdog_s=0.3)
    await plc.start()
    try:
        plc.write_raw("coil", 1, [True])  # green
        plc.write_raw("coil", 5, [True])  # scan permit
        plc.write_raw("coil", 0, [True])
        truck = plc.add_vehicle(Spot.UNDER)
        await plc.wait_for(lambda: plc.watchdog_tripped, timeout_s=2.0)
        assert plc.registers["plc_watchdog"] == 1
        assert plc.coils == {**plc.coils, "scan_permit": False, "light_green": False, "light_red": True,
                             "barrier_raise": False}
        await asyncio.sleep(0.3)
        assert plc.position == 1.0  # not onto the vehicle
        plc.move(truck, Spot.GONE)
        await plc.wait_for(lambda: plc.inputs["barrier_down"], timeout_s=2.0)
        # A coil rewrite alone does not clear it; the heartbeat has to move first.
        plc.write_raw("coil", 2, [True])
        assert plc.watchdog_tripped
        _keep_alive(plc)
        plc.write_raw("coil", 2, [True])
        assert not plc.watchdog_tripped
        assert plc.registers["plc_watchdog"] == 0
    finally:
        await plc.stop()


@run_async
async def test_vehicles_drive_the_loops_and_wait_for_the_barrier() -> None:
    plc = fast_plc(exit_loop=PointConfig(table="discrete_input", address=7), watchdog_s=30.0)
    await plc.start()
    seen: list[dict[str, bool]] = []
    try:
        truck = plc.add_vehicle(Spot.ENTRY)
        seen.append(plc.inputs)
        plc.move(truck, Spot.ZONE)
        await plc.vehicle_to_stop_line(truck)
        seen.append(plc.inputs)
        with pytest.raises(TimeoutError):
            await plc.vehicle_drives_through(truck, timeout_s=0.2)
        assert truck.spot is Spot.STOP
        plc.write_raw("coil", 0, [True])
        drive = asyncio.create_task(plc.vehicle_drives_through(truck, timeout_s=2.0))
        await plc.wait_for(lambda: plc.inputs["loop_safety"], timeout_s=2.0)
        await plc.wait_for(lambda: plc.inputs["exit_loop"], timeout_s=2.0)
        await drive
        assert plc.vehicles == []
        assert [s for _, s in truck.history] == [Spot.ENTRY, Spot.ZONE, Spot.STOP, Spot.UNDER, Spot.EXIT, Spot.GONE]
        assert seen[0]["loop_entry"]
        assert seen[1]["loop_stop"]
        assert not seen[1]["loop_entry"]
        back = plc.add_vehicle(Spot.STOP)
        await plc.vehicle_backs_out(back)
        assert [s for _, s in back.history] == [Spot.STOP, Spot.ZONE, Spot.ENTRY, Spot.GONE]
    finally:
        await plc.stop()


@run_async
async def test_a_vehicle_between_stop_and_safety_loop_and_one_turning_off_are_on_no_loop() -> None:
    plc = fast_plc(to_arm_s=0.3, watchdog_s=30.0)
    await plc.start()
    try:
        truck = plc.add_vehicle(Spot.STOP)
        plc.write_raw("coil", 0, [True])
        drive = asyncio.create_task(plc.vehicle_drives_through(truck, timeout_s=2.0))
        await plc.wait_for(lambda: truck.spot is Spot.TO_ARM, timeout_s=2.0)
        assert not any(plc.inputs[n] for n in ("loop_entry", "loop_stop", "loop_safety"))
        await plc.wait_for(lambda: plc.inputs["loop_safety"], timeout_s=2.0)
        await drive
        (left, _), (under, _) = [h for h in truck.history if h[1] in (Spot.TO_ARM, Spot.UNDER)]
        assert under - left >= 0.29
        other = plc.add_vehicle(Spot.STOP)
        assert plc.inputs["loop_stop"]
        plc.vehicle_turns_off(other)
        assert plc.vehicles == []
        assert [s for _, s in other.history] == [Spot.STOP, Spot.GONE]
        assert not any(plc.inputs[n] for n in ("loop_entry", "loop_stop", "loop_safety"))
        from gate_controller.plc.sim.standalone import console_command

        said: list[str] = []
        plc.add_vehicle(Spot.STOP)
        assert await console_command("turn", {1: plc}, [], said.append) is None
        assert plc.vehicles == []
        assert said[-1].endswith("gone by the side exit")
        with pytest.raises(LookupError):
            await console_command("turn", {1: plc}, [], said.append)
    finally:
        await plc.stop()


@run_async
async def test_faults_stuck_limit_switch_frozen_coil_and_key_switch() -> None:
    plc = fast_plc(watchdog_s=30.0)
    await plc.start()
    try:
        plc.stick_limit_switch("barrier_up", True)
        assert plc.inputs["barrier_up"]
        assert plc.inputs["barrier_down"]
        plc.stick_limit_switch("barrier_up", None)
        plc.freeze_coil("light_green")
        plc.write_raw("coil", 1, [True])
        assert plc.coils["light_green"] is False
        plc.set_key_switch(True)
        plc.write_raw("coil", 0, [True])
        await asyncio.sleep(0.3)
        assert plc.position == 0.0  # local control ignores the coil
        plc.local_barrier(True)
        await plc.wait_for(lambda: plc.inputs["barrier_up"], timeout_s=2.0)
    finally:
        await plc.stop()


@run_async
async def test_inverted_points_and_unmapped_addresses_on_the_wire() -> None:
    points = PointMap(estop=PointConfig(table="discrete_input", address=5, inverted=True))
    plc = VirtualLanePlc(points=points, watchdog_s=30.0)
    assert plc.read_raw("discrete_input", 5, 1) == [True]  # normally-closed contact: closed = not pressed
    plc.press_estop()
    assert plc.read_raw("discrete_input", 5, 1) == [False]
    from pymodbus.constants import ExcCodes

    assert plc.read_raw("discrete_input", 0, 8) == ExcCodes.ILLEGAL_ADDRESS
    assert plc.write_raw("holding_register", 5, [1]) == ExcCodes.ILLEGAL_ADDRESS


async def _mbpoll(*args: str) -> str:
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def _values(text: str) -> dict[int, int]:
    values: dict[int, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and "]:" in line:
            ref, value = line[1:].split("]:", 1)
            values[int(ref)] = int(value.split()[0], 0)
    return values


@needs_mbpoll
@run_async
async def test_mbpoll_reads_and_writes_the_point_map_over_tcp() -> None:
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    common = ["-m", "tcp", "-a", "1", "-p", str(port), "-0", "-1", "-o", "2"]
    try:
        truck = plc.add_vehicle(Spot.STOP)
        inputs = _values(await _mbpoll(*common, "-t", "1", "-r", "0", "-c", "7", "127.0.0.1"))
        assert inputs == {0: 0, 1: 1, 2: 0, 3: 0, 4: 1, 5: 0, 6: 0}
        await _mbpoll(*common, "-t", "0", "-r", "0", "127.0.0.1", "1")  # raise the barrier
        await wait_until(lambda: plc.inputs["barrier_up"], 3.0, "barrier up")
        coils = _values(await _mbpoll(*common, "-t", "0", "-r", "0", "-c", "6", "127.0.0.1"))
        assert coils == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
        await _mbpoll(*common, "-t", "4", "-r", "0", "127.0.0.1", "7", "1", "3")
        assert plc.holding == {"host_heartbeat": 7, "lane_state": 1, "display_message": 3}
        registers = _values(await _mbpoll(*common, "-t", "3", "-r", "0", "-c", "3", "127.0.0.1"))
        assert registers == {0: plc.version, 1: 0, 2: 0}
        assert [w.name for w in plc.writes] == ["barrier_raise", "host_heartbeat", "lane_state", "display_message"]
        plc.move(truck, Spot.GONE)
    finally:
        await server.stop()


@needs_mbpoll
@run_async
async def test_mbpoll_over_rtu_on_a_pty_pair_and_a_silent_unit() -> None:
    pair = PtyPair()
    pair.start()
    plc = fast_plc(watchdog_s=30.0)
    server = VirtualPlcServer({3: plc})
    await server.start_rtu(pair.a, baudrate=19200, parity="N")  # a pty cannot carry parity
    common = ["-m", "rtu", "-b", "19200", "-P", "none", "-0", "-1", "-o", "1"]
    try:
        plc.add_vehicle(Spot.ENTRY)
        inputs = _values(await _mbpoll(*common, "-a", "3", "-t", "1", "-r", "0", "-c", "7", pair.b))
        assert inputs[0] == 1
        assert inputs[4] == 1
        await _mbpoll(*common, "-a", "3", "-t", "0", "-r", "2", pair.b, "1")
        assert plc.coils["light_red"] is True
        plc.mute = True
        assert MBPOLL is not None
        proc = await asyncio.create_subprocess_exec(
            MBPOLL, *common, "-a", "3", "-t", "1", "-r", "0", pair.b,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert b"timed out" in out.lower() or b"timeout" in out.lower() or proc.returncode != 0, out
    finally:
        await server.stop()
        pair.close()


@needs_mbpoll
@run_async
async def test_smartgate_sim_plc_serves_tcp_and_rtu_and_takes_console_commands() -> None:
    import socket
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gate_controller", "sim", "plc", "--port", str(port), "--rtu", "pty",
        "--baud", "38400", "--console", "--travel", "0.2-0.3",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode() for _ in range(3)]
        rtu_line = next(line for line in lines if "Modbus RTU" in line)
        pts = rtu_line.split("open ", 1)[1].split(")", 1)[0]
        proc.stdin.write(b"arrive\nstop\n")
        await proc.stdin.drain()
        await asyncio.sleep(2.5)  # the default vehicle moves take a second each
        tcp = _values(await _mbpoll("-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-t", "1", "-r", "0",
                                    "-c", "7", "127.0.0.1"))
        assert tcp[1] == 1  # at the stop line
        rtu = _values(await _mbpoll("-m", "rtu", "-b", "38400", "-P", "none", "-a", "1", "-0", "-1", "-t", "1",
                                    "-r", "0", "-c", "7", pts))
        assert rtu == tcp
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
