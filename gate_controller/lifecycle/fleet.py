"""Model packages on the gate: install, canary, atomic switch, watch, rollback, all audited.

`ModelManager` is the gate's half of the fleet distribution (docs/commissioning.md):

1. A package arrives (the hub's retained message on ``{prefix}/{site}/models/{name}/{version}``,
   or ``smartgate model install``). `install` verifies the Ed25519 signature against
   ``inference.trusted_keys`` and every file hash, enforces the version floor, and files it in
   the `PackageStore`. A forged, truncated or wrongly hashed package is refused with a
   ``MODEL_PACKAGE`` alarm and never touches the running review.
2. ``model.activate`` (name, version, sha256 = the package's manifest digest) re-verifies the
   package on disk, replays the gate's labelled samples through the current and the new model in
   a child process (canary), and only when the new one does no worse switches the store's
   ``active`` entry and reloads the review worker (no restart, no gap; the worker verifies the
   signature once more before it loads the package). The previous package is kept.
3. For the next ``canary.watch_scans`` reviews the live suspect share is watched; above
   ``canary.max_suspect_share`` the switch is rolled back automatically.

Every step is an event (``MODEL_PACKAGE``, ``MODEL_CANARY``, ``MODEL_ACTIVATED``,
``MODEL_ROLLED_BACK``). Steps taken locally with ``smartgate model activate|rollback`` change the
store's state file; `poll` notices, reloads the worker and audits them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate_controller.config.schema import CanaryConfig
from gate_controller.core.ports import CommandRefused, EventSeverity, EventType
from inference.package import PackageError, PackageStore, TrustedKey, VerifiedPackage, load_public_keys
from inference.result import REASON_UNFAMILIAR, ReviewResult
from inference.worker import ReviewWorker

__all__ = ["CANARY_TIMEOUT_S", "EmitEvent", "ModelManager"]

log = logging.getLogger(__name__)

CANARY_TIMEOUT_S = 900.0

EmitEvent = Callable[..., Awaitable[None]]
"""``outbox.emit_event`` (keyword arguments lane, type, code, severity, active, detail)."""


@dataclass
class _Watch:
    name: str
    version: str
    remaining: int
    scans: int = 0
    suspects: int = 0


class ModelManager:
    def __init__(self, *, store: PackageStore, trusted_keys: list[Path], reviewer: ReviewWorker,
                 emit: EmitEvent, samples_dir: Path, canary: CanaryConfig, fallback_model: Path | None,
                 python: str = sys.executable) -> None:
        self.store = store
        self.key_paths = list(trusted_keys)
        self.reviewer = reviewer
        self._emit = emit
        self.samples_dir = samples_dir
        self.canary = canary
        self.fallback_model = fallback_model
        self._python = python
        self._lock = asyncio.Lock()
        self._watch: _Watch | None = None
        self._signature = store.active_signature()
        self._history_seen = len(store.history())
        self._background: set[asyncio.Task[None]] = set()
        self.last_canary: dict[str, Any] | None = None
        self._refused: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ helpers

    def keys(self) -> list[TrustedKey]:
        return load_public_keys(self.key_paths)

    def model_path(self) -> Path | None:
        """What the review should run now: the active package, else the configured model."""
        path = self.store.active_path()
        return path if path is not None else self.fallback_model

    async def _event(self, code: str, *, type_: EventType = "state", severity: EventSeverity = "info",
                     active: bool = True, **detail: Any) -> None:
        try:
            await self._emit(lane=None, type=type_, code=code, severity=severity, active=active, detail=detail)
        except Exception as err:  # an event that cannot be stored must not undo a switch
            log.error("cannot record %s: %s", code, err)  # noqa: TRY400

    def _sync_marks(self) -> None:
        self._signature = self.store.active_signature()
        self._history_seen = len(self.store.history())

    # ------------------------------------------------------------------ install

    async def install(self, data: bytes, *, source: str, expect: tuple[str, str] | None = None,
                      ) -> VerifiedPackage | None:
        """File a package archive (an MQTT payload); a refusal is an alarm, never an exception.
        ``expect``: the name and version the topic announced (the manifest must say the same)."""
        try:
            package = await asyncio.to_thread(self.store.install_archive, data, self.keys(), expect)
        except PackageError as err:
            error = str(err)[:1000]
            if (source, error) in self._refused:
                return None
            self._refused.add((source, error))
            log.error("model package from %s refused: %s", source, err)  # noqa: TRY400
            await self._event("MODEL_PACKAGE", type_="alarm", severity="error", source=source, ok=False,
                              bytes=len(data), error=error)
            return None
        m = package.manifest
        await asyncio.to_thread(self._sync_marks)
        await self._event("MODEL_PACKAGE", source=source, ok=True, name=m.name, version=m.version, sha256=m.digest,
                          signed_by=package.signed_by)
        return package

    async def receive_package(self, name: str, version: str, payload: bytes) -> None:
        """A package the hub published (``{prefix}/{site}/models/{name}/{version}``, retained).

        Retained packages arrive again after every reconnect: one already installed is skipped
        quietly, and a refusal is reported once per package and reason, not at every reconnect.
        """
        with contextlib.suppress(PackageError):
            if self.store.path_of(name, version).is_dir():
                log.debug("model package %s %s already installed", name, version)
                return
        await self.install(payload, source=f"models/{name}/{version}", expect=(name, version))

    # ------------------------------------------------------------------ activation

    async def activate(self, name: str, version: str, sha256: str | None, *, by: str) -> dict[str, Any]:
        async with self._lock:
            try:
                package = await asyncio.to_thread(self.store.verified, name, version, self.keys(), sha256)
            except PackageError as err:
                await self._event("MODEL_PACKAGE", type_="alarm", severity="error", source=f"activate by {by}",
                                  ok=False, name=name, version=version, error=str(err)[:1000])
                raise CommandRefused(f"package refused: {err}") from err
            current = self.model_path()
            result = await self._canary(current, package.directory)
            self.last_canary = result
            await self._event("MODEL_CANARY", severity="info" if result["passed"] else "warning", name=name,
                              version=version, by=by, **result)
            if not result["passed"]:
                await self._event("MODEL_ROLLED_BACK", type_="alarm", severity="warning", name=name,
                                  version=version, reason="canary", detail="; ".join(result["reasons"]),
                                  kept=str(current) if current else "shipped model")
                raise CommandRefused(f"canary failed, current model kept: {'; '.join(result['reasons'])}")
            before = await asyncio.to_thread(self.store.activate, package, reason=f"activated by {by}")
            if not await self.reviewer.reload(package.directory):
                await asyncio.to_thread(self.store.rollback, reason="new model did not load")
                await asyncio.to_thread(self._sync_marks)
                await self._event("MODEL_ROLLED_BACK", type_="alarm", severity="error", name=name, version=version,
                                  reason="load", detail=self.reviewer.last_error)
                raise CommandRefused(f"the new model did not load: {self.reviewer.last_error}")
            await asyncio.to_thread(self._sync_marks)
            self._watch = _Watch(name, version, self.canary.watch_scans)
            await self._event("MODEL_ACTIVATED", name=name, version=version, sha256=package.manifest.digest, by=by,
                              previous=before.as_dict() if before else None, watch_scans=self.canary.watch_scans)
            log.info("model %s %s active (by %s); watching the next %d scans", name, version, by,
                     self.canary.watch_scans)
            return result

    async def _canary(self, current: Path | None, candidate: Path) -> dict[str, Any]:
        args = [self._python, "-m", "inference.package.canary", "--candidate", str(candidate),
                "--samples", str(self.samples_dir)]
        if current is not None:
            args += ["--current", str(current)]
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CANARY_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        try:
            result: dict[str, Any] = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"passed": False, "reasons": [f"canary failed (exit {proc.returncode}): "
                                                 f"{err.decode(errors='replace')[-500:]}"]}
        if result.get("passed") and result.get("samples", 0) < self.canary.min_samples:
            result["passed"] = False
            result.setdefault("reasons", []).append(
                f"{result.get('samples', 0)} labelled samples, canary.min_samples is {self.canary.min_samples}")
        return result

    async def rollback(self, *, reason: str, by: str) -> None:
        async with self._lock:
            await self._rollback(reason=reason, by=by)

    async def _rollback(self, *, reason: str, by: str) -> None:
        try:
            rolled, now = await asyncio.to_thread(self.store.rollback, reason=f"{reason} ({by})")
        except PackageError as err:
            raise CommandRefused(str(err)) from err
        self._watch = None
        path = self.model_path()
        ok = await self.reviewer.reload(path)
        await asyncio.to_thread(self._sync_marks)
        await self._event("MODEL_ROLLED_BACK", type_="alarm", severity="warning", reason=reason, by=by,
                          rolled_back=rolled.as_dict() if rolled else None,
                          now_active=now.as_dict() if now else {"path": str(path) if path else "shipped model"},
                          reloaded=ok)

    # ------------------------------------------------------------------ live watch

    def observe(self, lane: str, result: ReviewResult) -> None:
        """Every review's result (GateDecider.on_review): the post-switch suspect-share watch. A
        scan the new model's guard calls unfamiliar (``unavailable``) stops the truck as a suspect
        one does (manual), so it counts as a suspect here: a model that stops every truck either
        way is rolled back. An unreadable scan (``unavailable`` for an error) is no figure of the
        model and is skipped."""
        watch = self._watch
        if watch is None or (result.verdict == "unavailable" and result.reason != REASON_UNFAMILIAR):
            return
        if (result.model, result.version) != (watch.name, watch.version):
            return
        watch.scans += 1
        watch.suspects += result.verdict != "clear"
        watch.remaining -= 1
        limit = self.canary.max_suspect_share * self.canary.watch_scans
        if watch.suspects > limit:
            self._watch = None
            share = watch.suspects / max(watch.scans, 1)
            log.error("model %s %s: %d suspect of %d scans since the switch (limit %.0f %% of %d): rolling back",
                      watch.name, watch.version, watch.suspects, watch.scans, self.canary.max_suspect_share * 100,
                      self.canary.watch_scans)
            task = asyncio.get_running_loop().create_task(
                self.rollback(reason=f"live suspect share {share:.0%} over {watch.scans} scans exceeds "
                                     f"{self.canary.max_suspect_share:.0%}", by="watch"),
                name="model-rollback")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif watch.remaining <= 0:
            self._watch = None
            log.info("model %s %s passed its live watch: %d suspect of %d scans", watch.name, watch.version,
                     watch.suspects, watch.scans)

    @property
    def watching(self) -> Mapping[str, Any] | None:
        w = self._watch
        return None if w is None else {"name": w.name, "version": w.version, "scans": w.scans,
                                       "suspects": w.suspects, "remaining": w.remaining}

    async def wait_idle(self) -> None:
        """Until background rollbacks finished (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------------ local changes

    async def poll(self) -> None:
        """Pick up ``smartgate model activate|rollback`` run on the gate: reload and audit."""
        if self._lock.locked():
            return
        async with self._lock:
            signature = await asyncio.to_thread(self.store.active_signature)
            if signature == self._signature:
                return
            history = await asyncio.to_thread(self.store.history)
            new = history[self._history_seen:] if len(history) >= self._history_seen else history[-1:]
            self._signature = signature
            self._history_seen = len(history)
            path = self.model_path()
            ok = True
            if path != self.reviewer.model_path:
                ok = await self.reviewer.reload(path)
                if not ok:
                    log.error("locally activated model %s does not load: %s", path, self.reviewer.last_error)
            for entry in new:
                step = entry.get("step")
                code = {"activated": "MODEL_ACTIVATED", "rolled_back": "MODEL_ROLLED_BACK",
                        "installed": "MODEL_PACKAGE"}.get(str(step), "MODEL_PACKAGE")
                await self._event(code, type_="alarm" if code == "MODEL_ROLLED_BACK" else "state",
                                  severity="warning" if code == "MODEL_ROLLED_BACK" else "info",
                                  local=True, **{k: v for k, v in entry.items() if k != "step"}, step=step)
            if not ok:
                await self._refused_locally(path, new[-1] if new else {})

    async def _refused_locally(self, path: Path | None, last: Mapping[str, Any]) -> None:
        """The review worker refused what ``smartgate model activate|rollback`` made active (a file
        changed since, a signature that no longer verifies): the previous model keeps serving, and
        a local activation is undone in the store so that the store says what runs."""
        error = self.reviewer.last_error
        if last.get("step") == "activated":
            with contextlib.suppress(PackageError):
                await asyncio.to_thread(self.store.rollback, reason=f"the review worker refused it: {error}")
            await asyncio.to_thread(self._sync_marks)
            await self._event("MODEL_ROLLED_BACK", type_="alarm", severity="error", reason="load", local=True,
                              name=last.get("name"), version=last.get("version"), detail=error,
                              kept=str(self.reviewer.model_path or "shipped model"))
        else:
            await self._event("MODEL_PACKAGE", type_="alarm", severity="error", source="local", ok=False,
                              path=str(path) if path else None, error=error,
                              kept=str(self.reviewer.model_path or "shipped model"))
