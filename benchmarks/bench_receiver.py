"""GFP/1 receiver throughput and CPU cost.

1. In memory: the frame receiver alone, and receiver + scan assembly (sha256, scan built), on a
   stream of 40 ft synthetic scans fed in 64 KiB reads.
2. Over one pty, in the same run: the raw read rate (``os.read`` as fast as the writer goes)
   against the full `GfpLink` (reader thread, receiver, assembly, events) on the same stream.
   The writer is a separate process so the numbers are the reader's.
3. CPU use of the receiving process while ingesting at 921,600 baud nominal (8N1 = 92,160 B/s,
   paced in software by the writer, since a pty ignores the baud rate).

Usage: .venv/bin/python benchmarks/bench_receiver.py [--scans N] [--cpu-seconds S] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time
import tty
import zlib
from multiprocessing.synchronize import Event as MpEvent

from firmware_bridge.events import ScanEvent
from firmware_bridge.frame import FIRMWARE_TO_DAEMON, MAX_READ_CHUNK, encode_frame
from firmware_bridge.link import GfpLink
from firmware_bridge.messages import Hello, OcrRead, ScanBegin, ScanEnd, ScanLines, decode_firmware_message
from firmware_bridge.receiver import FrameReceiver
from firmware_bridge.scan_assembler import AssembledScan, ScanAssembler
from firmware_bridge.settings import LinkSettings
from inference.synthetic import generate_scan

MB = 1_000_000


def build_stream(n_scans: int) -> tuple[bytes, int]:
    """SCAN_BEGIN / SCAN_LINES (64 KiB payloads) / SCAN_END for n 40 ft scans, OCR reads between."""
    scan = generate_scan(7, length_ft=40).scan
    data = scan.wire_bytes()
    cb = scan.rows * scan.channels * 2
    per_frame = (65_536 - 10) // cb
    crc = zlib.crc32(data)
    seq = 0
    out = bytearray()

    def add(frame_type: int, payload: bytes) -> None:
        nonlocal seq
        out.extend(encode_frame(frame_type, seq, payload))
        seq += 1

    hello = Hello("scanner", "bench", "B-1", 1, scan.rows, scan.channels, scan.bits)
    add(hello.frame_type, hello.to_payload())
    for no in range(1, n_scans + 1):
        sid = f"BENCH-{no:04d}"
        begin = ScanBegin(no, sid, scan.rows, scan.channels, scan.bits, scan.pixel_mm, 0, scan.columns)
        add(begin.frame_type, begin.to_payload())
        for k, start in enumerate(range(0, scan.columns, per_frame)):
            count = min(per_frame, scan.columns - start)
            lines = ScanLines(no, start, count, data[start * cb:(start + count) * cb])
            add(lines.frame_type, lines.to_payload())
            if k % 10 == 5:
                read = OcrRead("container", "left", "MSCU1234565", 0.93)
                add(read.frame_type, read.to_payload())
        end = ScanEnd(no, sid, scan.columns, crc, 1, 6.0)
        add(end.frame_type, end.to_payload())
    return bytes(out), len(data)


def in_memory(stream: bytes, n_scans: int) -> tuple[float, float]:
    rx = FrameReceiver(FIRMWARE_TO_DAEMON)
    t0 = time.perf_counter()
    frames = 0
    for start in range(0, len(stream), MAX_READ_CHUNK):
        frames += len(rx.feed(stream[start:start + MAX_READ_CHUNK], 0.0))
    parse_s = time.perf_counter() - t0

    rx = FrameReceiver(FIRMWARE_TO_DAEMON)
    asm = ScanAssembler()
    done = 0
    t0 = time.perf_counter()
    for start in range(0, len(stream), MAX_READ_CHUNK):
        for frame in rx.feed(stream[start:start + MAX_READ_CHUNK], 0.0):
            msg = decode_firmware_message(frame)
            if isinstance(msg, ScanLines):
                actions = asm.on_lines(msg, 0.0)
            elif isinstance(msg, ScanBegin):
                actions = asm.on_begin(msg, 0.0)
            elif isinstance(msg, ScanEnd):
                actions = asm.on_end(msg, 0.0)
            else:
                continue
            done += sum(1 for a in actions if isinstance(a, AssembledScan) and a.complete)
    full_s = time.perf_counter() - t0
    assert done == n_scans, done
    return len(stream) / parse_s / MB, len(stream) / full_s / MB


def writer(master: int, stream: bytes, go: MpEvent, rate: float | None, stop: MpEvent) -> None:
    """Child process: write the stream into the pty master (paced when ``rate`` is set)."""
    os.set_blocking(master, True)
    go.wait()
    view = memoryview(stream)
    slice_size = int(rate * 0.01) if rate else 65_536
    t0 = time.perf_counter()
    sent = 0
    while sent < len(view) and not stop.is_set():
        n = os.write(master, view[sent:sent + slice_size])
        sent += n
        if rate:
            ahead = sent / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)


def start_writer(master: int, stream: bytes, rate: float | None = None) -> tuple[mp.Process, MpEvent, MpEvent]:
    ctx = mp.get_context("fork")
    go, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=writer, args=(master, stream, go, rate, stop), daemon=True)
    proc.start()
    return proc, go, stop


def raw_pty_rate(stream: bytes) -> float:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        proc, go, _stop = start_writer(master, stream)
        total = 0
        go.set()
        t0 = time.perf_counter()
        while total < len(stream):
            total += len(os.read(slave, MAX_READ_CHUNK))
        elapsed = time.perf_counter() - t0
        proc.join()
        return len(stream) / elapsed / MB
    finally:
        os.close(master)
        os.close(slave)


async def link_rate(stream: bytes, n_scans: int) -> float:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    # Fork the writer before the link opens the port: a child forked later would inherit the
    # port's descriptor and its exclusive lock.
    proc, go, _stop = start_writer(master, stream)
    link = GfpLink(LinkSettings(name="bench", url=path))
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected()
        await asyncio.sleep(0.1)
        drain = asyncio.get_running_loop()
        drain.add_reader(master, lambda: os.read(master, 65_536))  # our HEARTBEATs and SCAN_ACKs
        go.set()
        t0 = time.perf_counter()
        complete = 0
        async for event in link.events():
            if isinstance(event, ScanEvent):
                assert event.complete, event.reason
                complete += 1
                if complete == n_scans:
                    break
        elapsed = time.perf_counter() - t0
        drain.remove_reader(master)
        proc.join()
        return len(stream) / elapsed / MB
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(master)
        os.close(slave)


async def cpu_at_baud(stream: bytes, baud: int, seconds: float) -> tuple[float, float, int]:
    """Receiving-process CPU (% of one core) while ingesting, and idle with the link up."""
    master, slave = os.openpty()
    tty.setraw(slave)
    proc, go, stop = start_writer(master, stream, rate=baud / 10)
    link = GfpLink(LinkSettings(name="bench", url=os.ttyname(slave), baudrate=baud))
    task = asyncio.create_task(link.run())
    loop = asyncio.get_running_loop()
    try:
        await link.wait_connected()
        loop.add_reader(master, lambda: os.read(master, 65_536))
        hello = Hello("scanner", "bench", "B-1", 1, 256, 2, 16)
        os.write(master, encode_frame(hello.frame_type, 0, hello.to_payload()))  # the link is up
        await asyncio.sleep(0.5)
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(min(3.0, seconds))
        idle = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
        b0 = link.counters().bytes_rx
        go.set()
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        busy = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
        received = link.counters().bytes_rx - b0
        stop.set()
        proc.join()
        loop.remove_reader(master)
        return busy, idle, received
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(master)
        os.close(slave)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=8, help="40 ft scans in the stream (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="pty runs, median reported (default 3)")
    parser.add_argument("--cpu-seconds", type=float, default=10.0, help="ingest time for the CPU figure")
    args = parser.parse_args()

    stream, pixel_bytes = build_stream(args.scans)
    print(f"stream: {args.scans} x 40 ft scans (2400 x 256 x 2 x 16 bit, {pixel_bytes / MB:.2f} MB each), "
          f"{len(stream) / MB:.1f} MB on the wire")
    parse, full = in_memory(stream, args.scans)
    print(f"in memory, 64 KiB reads: receiver {parse:8.0f} MB/s | receiver + assembly + sha256 {full:8.0f} MB/s")
    raws, links = [], []
    for _ in range(args.repeat):
        raws.append(raw_pty_rate(stream))
        links.append(asyncio.run(link_rate(stream, args.scans)))
    raw, link = statistics.median(raws), statistics.median(links)
    print(f"same pty, median of {args.repeat}: raw os.read {raw:8.1f} MB/s | GfpLink end to end {link:8.1f} MB/s "
          f"({link / raw * 100:.0f} % of raw)")
    busy, idle, received = asyncio.run(cpu_at_baud(stream, 921_600, args.cpu_seconds))
    print(f"921,600 baud nominal (92,160 B/s paced): {received / args.cpu_seconds / 1000:.1f} kB/s ingested, "
          f"receiving process CPU {busy:.1f} % of one core (idle link up: {idle:.1f} %)")


if __name__ == "__main__":
    main()
