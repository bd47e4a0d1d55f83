"""Image review isolated in a child process, for the daemon's event loop.

The TFLite runtime is native code: a crash (segfault, OOM kill) or a hang inside it must not take
the daemon down, and a review must never block the event loop. `ReviewWorker` therefore runs
`inference.reviewer.Reviewer` in a separate Python process and talks to it over the child's
stdin/stdout with asyncio streams (no threads, no shared memory to clean up):

* request: one JSON line (scan fields, ``payload_bytes``) followed by the raw pixel bytes;
* response: one JSON line (the `ReviewResult` as a dict).

Every failure (the child crashes, hangs past ``timeout_s``, cannot load its model, answers
garbage) yields a result with verdict ``unavailable`` and the reason in ``error``; the broken
child is killed and the next call starts a new one. A child that fails to start (e.g. the model
file is missing) is retried with capped exponential backoff plus jitter, and calls in between
answer ``unavailable`` at once instead of spawning a process per scan.

The daemon owns the lifetime: ``await worker.start()`` at startup, ``await worker.close()`` at
shutdown; ``async with ReviewWorker(...)`` does both. ``suspect_threshold``,
``not_empty_threshold``, ``opaque_area_m2`` and ``timeout_s`` may be reassigned at any time (config reload): the
thresholds travel with every request, the timeout applies to the next call.

With ``trusted_keys`` (the gate's ``inference.trusted_keys``) a model package is loaded only when
its Ed25519 signature verifies with one of those keys, besides every file hash: a package altered
on disk after it was installed (even with its manifest's hashes recomputed) is refused like a model
that does not load, and the previous model keeps serving. Without (``None``), a package's hashes
are checked but not its signature (``smartgate review --model`` on a workstation).

Run as ``python -m inference.worker`` this module is the child side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from inference.result import ReviewResult
from inference.runtime import ModelInfo
from inference.scan import Scan

__all__ = ["ReviewWorker"]

_log = logging.getLogger(__name__)

_MAX_LINE = 1 << 20
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # so the child imports this very package


class ReviewWorker:
    """Asynchronous facade over a review child process. One review at a time; callers queue."""

    def __init__(
        self,
        model_path: Path | None = None,
        num_threads: int = 1,
        timeout_s: float = 5.0,
        *,
        suspect_threshold: float | None = None,
        not_empty_threshold: float | None = None,
        opaque_area_m2: float | None = None,
        start_timeout_s: float = 60.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        python: str = sys.executable,
        trusted_keys: Sequence[Path] | None = None,
    ) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (got {num_threads})")
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        self.model_path = Path(model_path) if model_path is not None else None
        self.num_threads = num_threads
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.suspect_threshold = suspect_threshold
        self.not_empty_threshold = not_empty_threshold
        self.opaque_area_m2 = opaque_area_m2
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._clock = clock
        self._python = python
        self.trusted_keys = [Path(p) for p in trusted_keys] if trusted_keys is not None else None
        """Public keys (PEM files) a package must be signed with; None: hashes only."""
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._backoff = 0.0
        self._not_before = 0.0
        self._closed = False
        self.model_info: ModelInfo | None = None
        self.last_error: str | None = None
        self.restarts = 0

    # --- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> ReviewWorker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        """The child's pid while one runs (for supervision and fault-injection tests)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def start(self) -> bool:
        """Start the child and load the model. Never raises for model problems: returns False,
        sets `last_error`, and the worker answers ``unavailable`` until a later start succeeds."""
        self._closed = False
        async with self._lock:
            return await self._ensure_started(force=True)

    async def reload(self, model_path: Path | None) -> bool:
        """Switch to another model without a gap in service: the new child is started (and its
        model loaded and checked) while reviews wait; only when it is ready does it replace the
        old one, which then exits. When the new model cannot start, the old child keeps serving,
        `last_error` says why, and the answer is False."""
        async with self._lock:
            old_proc, old_path, old_info = self._proc, self.model_path, self.model_info
            self._proc = None
            self.model_path = Path(model_path) if model_path is not None else None
            try:
                await asyncio.wait_for(self._spawn(), self.start_timeout_s)
            except (TimeoutError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
                await self._stop(graceful=False)
                self._proc, self.model_path, self.model_info = old_proc, old_path, old_info
                self.last_error = f"model {model_path} did not load: {err or type(err).__name__}"
                _log.error("%s; the previous model keeps serving", self.last_error)
                return False
            except asyncio.CancelledError:
                await self._stop(graceful=False)
                self._proc, self.model_path, self.model_info = old_proc, old_path, old_info
                raise
            new_proc, self._proc = self._proc, old_proc
            await self._stop(graceful=True)
            self._proc = new_proc
            self.last_error = None
            self._backoff = 0.0
            return True

    async def close(self) -> None:
        """Stop the child (EOF on its stdin, then kill if it does not exit) and reap it."""
        self._closed = True
        async with self._lock:
            await self._stop(graceful=True)

    # --- review -----------------------------------------------------------------------------

    async def review(self, scan: Scan, *, declared: str | None = None) -> ReviewResult:
        """Review a scan in the child. Always returns; failures are verdict ``unavailable``."""
        if self._closed:
            return self._unavailable("review worker is closed", scan)
        async with self._lock:
            t0 = self._clock()
            if not await self._ensure_started(force=False):
                return self._unavailable(self.last_error or "review worker not running", scan)
            try:
                result = await asyncio.wait_for(self._exchange(scan, declared), self.timeout_s)
            except TimeoutError:
                await self._fail(f"review timed out after {self.timeout_s:g} s; worker killed")
                return self._unavailable(self.last_error or "timeout", scan, latency_ms=(self._clock() - t0) * 1000)
            except asyncio.CancelledError:
                # The pipe is mid-message: the child cannot be reused.
                await self._stop(graceful=False)
                raise
            except (ConnectionError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
                code = await _returncode_soon(self._proc, 0.5) if self._proc is not None else None
                if code is not None:
                    await self._fail(f"review process exited (code {code}) during the review")
                else:
                    await self._fail(f"review worker failed: {type(err).__name__}: {err}")
                return self._unavailable(self.last_error or str(err), scan, latency_ms=(self._clock() - t0) * 1000)
            return result

    async def _exchange(self, scan: Scan, declared: str | None) -> ReviewResult:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        self._next_id += 1
        payload = scan.pixels.astype(scan.pixels.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header = {
            "type": "review", "id": self._next_id, "declared": declared, "payload_bytes": len(payload),
            # Sent with every request so that a config reload applies to the very next review.
            "suspect_threshold": self.suspect_threshold, "not_empty_threshold": self.not_empty_threshold,
            "opaque_area_m2": self.opaque_area_m2,
            "scan": {"scan_id": scan.scan_id, "bits": scan.bits, "pixel_mm": scan.pixel_mm,
                     "declared": scan.declared, "shape": list(scan.pixels.shape), "meta": _json_safe(scan.meta)},
        }
        proc.stdin.write(json.dumps(header).encode() + b"\n")
        proc.stdin.write(payload)
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line:
            code = await _returncode_soon(proc)
            raise EOFError(f"review process exited (code {code}) during the review")
        msg = json.loads(line)
        if msg.get("type") != "result" or msg.get("id") != self._next_id:
            raise ValueError(f"unexpected message from review process: {str(msg)[:200]}")
        return ReviewResult.from_dict(msg["result"])

    # --- child management -------------------------------------------------------------------

    async def _ensure_started(self, *, force: bool) -> bool:
        if self._proc is not None and self._proc.returncode is None:
            return True
        if self._proc is not None:  # died between reviews
            await self._fail(f"review process exited (code {self._proc.returncode})")
        if not force and self._clock() < self._not_before:
            return False
        try:
            await asyncio.wait_for(self._spawn(), self.start_timeout_s)
        except TimeoutError:
            await self._start_failed(f"review process did not become ready within {self.start_timeout_s:g} s")
            return False
        except asyncio.CancelledError:
            await self._stop(graceful=False)  # never leave a half-started child behind
            raise
        except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
            await self._start_failed(f"review process failed to start: {err}")
            return False
        if self._proc is None:
            return False
        self._backoff = 0.0
        if self.last_error is not None:
            info = self.model_info
            _log.info("review worker recovered (pid %d, model %s %s)", self._proc.pid,
                      info.name if info else "?", info.version if info else "?")
        self.last_error = None
        return True

    async def _spawn(self) -> None:
        # -P: the child imports this very package (PYTHONPATH below), never an `inference` that
        # happens to lie in the working directory.
        args = [self._python, "-P", "-m", "inference.worker", "--threads", str(self.num_threads)]
        if self.model_path is not None:
            args += ["--model", str(self.model_path)]
        if self.trusted_keys is not None:
            args.append("--require-signature")
            for key in self.trusted_keys:
                args += ["--trusted-key", str(key)]
        env = dict(os.environ)
        root = _PACKAGE_ROOT
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=_MAX_LINE)
        self._proc = proc
        self.restarts += 1
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            code = await _returncode_soon(proc)
            await self._stop(graceful=False)
            raise EOFError(f"review process exited (code {code}) before it was ready")
        msg = json.loads(line)
        if msg.get("type") == "ready":
            self.model_info = ModelInfo(**msg["model"])
            _log.info("review worker ready (pid %d, model %s %s, %s)", proc.pid, self.model_info.name,
                      self.model_info.version, msg.get("backend"))
            return
        await self._stop(graceful=False)
        raise ValueError(str(msg.get("error") or msg)[:500])

    async def _start_failed(self, error: str) -> None:
        await self._stop(graceful=False)
        self._backoff = min(self._backoff_max, max(self._backoff_initial, self._backoff * 2))
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._not_before = self._clock() + delay
        if error != self.last_error:
            _log.error("%s; retrying in %.1f s at the earliest", error, delay)
        self.last_error = error

    async def _fail(self, error: str) -> None:
        """A running child broke: kill it; the next call restarts at once."""
        if error != self.last_error:
            _log.error("%s", error)
        self.last_error = error
        await self._stop(graceful=False)
        self._not_before = 0.0

    async def _stop(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and not graceful:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            # communicate() closes stdin (EOF = "exit" for the child), drains stdout, reaps.
            await asyncio.wait_for(proc.communicate(), 5.0 if graceful else 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        except (OSError, ValueError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _unavailable(self, error: str, scan: Scan, *, latency_ms: float = 0.0) -> ReviewResult:
        info = self.model_info
        return ReviewResult.unavailable(error, latency_ms=latency_ms, model=info.name if info else None,
                                        version=info.version if info else None, scan_id=scan.scan_id)


async def _returncode_soon(proc: asyncio.subprocess.Process, timeout_s: float = 2.0) -> int | None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout_s)
    return proc.returncode


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(meta)
    except (TypeError, ValueError):
        return {}
    return meta


# --- child side -------------------------------------------------------------------------------


def _wire_dtype(dtypes: dict[int, Any], bits: Any) -> Any:
    if bits not in dtypes:
        raise ValueError(f"bits must be 8 or 16 (got {bits!r})")
    return dtypes[bits]


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("parent closed the pipe mid-request")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _child_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.worker")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--require-signature", action="store_true",
                        help="load a model package only when signed by a --trusted-key")
    parser.add_argument("--trusted-key", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    # The protocol owns the original stdout; anything else printing (native runtime banners,
    # stray prints) goes to stderr so it can never corrupt the pipe.
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="review-worker[%(process)d] %(levelname)s %(name)s: %(message)s")

    def send(msg: dict[str, Any]) -> None:
        proto_out.write(json.dumps(msg).encode() + b"\n")

    import numpy as np

    from inference.errors import SmartGateError
    from inference.package.build import verify_package
    from inference.package.keys import load_public_keys
    from inference.package.loader import is_package, open_reviewer
    from inference.package.manifest import PackageError

    try:
        if args.require_signature and args.model is not None and is_package(args.model):
            try:
                package = verify_package(args.model, load_public_keys(args.trusted_key))
            except PackageError as err:
                raise PackageError(f"package refused by the review worker: {err}") from err
            logging.getLogger(__name__).info("package %s %s: signature by key %s and every hash verified",
                                             package.manifest.name, package.manifest.version, package.signed_by)
        reviewer = open_reviewer(args.model, args.threads)
    except (SmartGateError, ValueError) as err:
        send({"type": "error", "error": str(err)})
        return 3
    send({"type": "ready", "model": reviewer.model_info.as_dict(), "backend": reviewer.backend})
    dtypes: dict[int, np.dtype[Any]] = {8: np.dtype("u1"), 16: np.dtype("<u2")}
    while True:
        line = proto_in.readline()
        if not line:
            return 0
        req = json.loads(line)
        payload = _read_exact(proto_in, int(req["payload_bytes"]))
        s = req["scan"]
        t0 = time.perf_counter()
        try:
            dtype = _wire_dtype(dtypes, s["bits"])
            pixels = np.frombuffer(payload, dtype=dtype).reshape(s["shape"]).astype(dtype.newbyteorder("="))
            scan = Scan(pixels=pixels, scan_id=s["scan_id"], bits=s["bits"], pixel_mm=s["pixel_mm"],
                        declared=s.get("declared"), meta=s.get("meta") or {})
            reviewer.set_thresholds(req.get("suspect_threshold"), req.get("not_empty_threshold"),
                                    req.get("opaque_area_m2"))
            result = reviewer.review(scan, declared=req.get("declared"))
        except (SmartGateError, ValueError) as err:
            info = reviewer.model_info
            result = ReviewResult.unavailable(str(err), latency_ms=(time.perf_counter() - t0) * 1000,
                                              model=info.name, version=info.version, scan_id=s.get("scan_id"))
        send({"type": "result", "id": req["id"], "result": result.as_dict()})


if __name__ == "__main__":
    sys.exit(_child_main())
