"""Labelled samples back to the hub (结果反馈), in bounded, resumable chunks at low priority.

Each sample (``NAME.json`` + ``NAME.npz`` in the samples directory, the format
``python -m inference.training train --samples`` reads) is packed into one tar and sent as chunks
of at most `CHUNK_BYTES` on ``{root}/samples/{NAME}/{index}``. A chunk is a header line of JSON
(``format``, ``sample``, ``chunk``, ``chunks``, ``offset``, ``bytes``, ``sha256`` of the whole
tar), a newline, then the bytes. The hub reassembles with `gate_controller.hub.hub_side.SampleAssembler`.

*Low priority*: a chunk is committed to the outbox only while the hub link is up and the outbox
holds nothing else, so transactions, events and replies always go first and a long upload never
delays one by more than a chunk. *Bounded*: one chunk in the outbox at a time. *Resumable*: the
outbox row is durable (a broker or daemon restart re-sends it), and the progress per sample is
kept in ``uploads.json`` after each chunk, so an interrupted upload continues where it stopped.
A sample whose files change (a re-inspection relabels it) is sent again.

Uploads run on the hub's ``samples.upload`` command and, with ``inference.sample_upload_interval_s``,
on a schedule.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gate_controller.core.atomic import write_atomic
from gate_controller.hub.outbox import Outbox

__all__ = ["CHUNK_BYTES", "CHUNK_FORMAT", "SampleUploader", "pack_sample"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
CHUNK_FORMAT = "smartgate.sample-chunk/1"
_IDLE_POLL_S = 0.2


def pack_sample(meta_path: Path) -> tuple[bytes, list[str]]:
    """The sample's label JSON and scan as one deterministic tar (sorted, fixed mtime and mode)."""
    raw = json.loads(meta_path.read_text(encoding="utf-8"))
    scan_name = str(raw.get("scan_file") or meta_path.with_suffix(".npz").name) if isinstance(raw, dict) else ""
    files = [meta_path, meta_path.with_name(scan_name)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), [p.name for p in files]


class SampleUploader:
    def __init__(self, *, samples_dir: Path, outbox: Outbox, state_path: Path, hub_connected: Callable[[], bool],
                 interval_s: float | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be >= 1024")
        self.samples_dir = samples_dir
        self.outbox = outbox
        self.state_path = state_path
        self.hub_connected = hub_connected
        self.interval_s = interval_s
        self.chunk_bytes = chunk_bytes
        self._wake = asyncio.Event()
        self._since: str | None = None
        self.chunks_sent = 0
        self.samples_done = 0
        self.running = False

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("%s unreadable (%s): every sample is uploaded again", self.state_path, err)
            return {}
        return raw if isinstance(raw, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_path, (json.dumps(state, indent=1) + "\n").encode("utf-8"), durable=True)

    def pending(self) -> list[Path]:
        """Samples not (completely) uploaded in their current form."""
        state = self._state()
        out = []
        for meta in sorted(self.samples_dir.glob("*.json")):
            entry = state.get(meta.stem)
            stamp = _stamp(meta)
            if not isinstance(entry, dict) or entry.get("stamp") != stamp or entry.get("done") != entry.get("chunks"):
                out.append(meta)
        return out

    # ------------------------------------------------------------------ triggers

    def request(self, since: str | None = None) -> int:
        """The hub's ``samples.upload``: start (or continue) now; returns how many samples wait."""
        self._since = since
        self._wake.set()
        return len(self.pending())

    async def run(self) -> None:
        while True:
            try:
                if self.interval_s is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.upload_pending()

    async def upload_pending(self) -> int:
        """Upload every pending sample; returns how many were completed."""
        self.running = True
        done = 0
        try:
            for meta in await asyncio.to_thread(self.pending):
                if self._since is not None and not _labelled_since(meta, self._since):
                    continue
                if await self._upload(meta):
                    done += 1
        finally:
            self.running = False
        if done:
            log.info("uploaded %d labelled sample(s) to the hub", done)
        return done

    async def _idle(self) -> None:
        """Until the hub link is up and nothing else waits in the outbox."""
        # The outbox signals new rows, not acknowledgements: a short poll of its in-memory count is
        # the simplest way to see it drain.
        while not (self.hub_connected() and self.outbox.pending_count() == 0):  # noqa: ASYNC110
            await asyncio.sleep(_IDLE_POLL_S)

    async def _upload(self, meta: Path) -> bool:
        try:
            data, files = await asyncio.to_thread(pack_sample, meta)
        except (OSError, ValueError) as err:
            log.warning("sample %s not uploaded: %s", meta.name, err)
            return False
        stamp = _stamp(meta)
        digest = hashlib.sha256(data).hexdigest()
        chunks = max(1, -(-len(data) // self.chunk_bytes))
        state = await asyncio.to_thread(self._state)
        entry = state.get(meta.stem)
        start = 0
        if isinstance(entry, dict) and entry.get("sha256") == digest and entry.get("chunks") == chunks:
            start = int(entry.get("done", 0))
        for index in range(start, chunks):
            await self._idle()
            offset = index * self.chunk_bytes
            header = {"format": CHUNK_FORMAT, "sample": meta.stem, "chunk": index, "chunks": chunks, "offset": offset,
                      "bytes": len(data), "sha256": digest, "files": files}
            body = data[offset:offset + self.chunk_bytes]
            payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + body
            await self.outbox.enqueue_sample_chunk(meta.stem, index, payload)
            state[meta.stem] = {"stamp": stamp, "sha256": digest, "chunks": chunks, "done": index + 1}
            await asyncio.to_thread(self._save, state)
            self.chunks_sent += 1
        self.samples_done += 1
        return True


def _stamp(meta: Path) -> list[int]:
    """Changes when the label or the scan file is rewritten."""
    out = []
    for path in (meta, meta.with_suffix(".npz")):
        try:
            st = path.stat()
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [0, 0]
    return out


def _labelled_since(meta: Path, since: str) -> bool:
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    labelled = raw.get("labelled_at") if isinstance(raw, dict) else None
    return not isinstance(labelled, str) or labelled >= since
