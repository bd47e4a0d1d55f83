"""Loops and evidence to passages and decisions.

Which vehicle is which is told from the order of the loop edges and from where the sensors sit
(docs/lane-states.md, "Which vehicle is which"); OCR reads and scans are attached to the passage
they belong to, and a passage is decided once its evidence is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from gate_controller.core.ports import (
    DecisionOutcome,
    OcrObservation,
    PassageEvidence,
    ScanObservation,
)
from gate_controller.lane.core import LaneCore, log
from gate_controller.lane.passage import (
    Decided,
    Mode,
    Passage,
    Phase,
    fallback_outcome,
)
from gate_controller.lane.transaction import Action

UNFAMILIAR_ALARM_S: Final = 3600.0
"""REVIEW_UNFAMILIAR is raised at most once per this many seconds per lane."""


class PassageTracking(LaneCore):
    """Loop edges, evidence, decisions and the passage timers of a lane."""

    async def _entry_rose(self, now: float) -> None:
        if self._entry_fell_at is not None and now - self._entry_fell_at < self._config.timeouts.entry_gap_s:
            return  # a gap between tractor and trailer, not a new vehicle
        cur = self._current
        front_unseen = None
        ambiguous = False
        if (cur is not None and self._arriving is None and cur.stop_clear_since is not None
                and cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED)
                and not cur.safety_seen):
            left_s = now - cur.stop_clear_since
            if left_s < self._config.timeouts.reverse_min_s:
                # Too soon for the vehicle that left the stop line to have reversed the whole scan
                # zone: this is the next one, queued behind, while the one in front clears the
                # barrier (or turns off). The passage in front keeps its own timers.
                log.info("lane %s: entry loop %.1f s after %s left the stop line: the next vehicle",
                         self.id, left_s, cur.id)
                if cur.phase in (Phase.COLLECTING, Phase.DECIDING):
                    # It left the stop line before its decision was carried out: it may be waiting in
                    # the scan zone ahead of the new one. Neither passage is vouched for.
                    await self._finish(cur, cancelled=True)
                    ambiguous = True
                else:
                    # Admitted on timing alone: until the vehicle in front is seen going on (safety
                    # loop, exit detector), it may still be in the scan zone ahead of this one.
                    front_unseen = cur
            else:
                # The vehicle that left the stop line without passing is reversing out over the
                # entry loop; nobody can enter the lane behind it while it does.
                await self._reversed_out(cur)
                return
        if self._arriving is not None:
            # One vehicle in the scan zone at a time: a second arrival before the first reached the
            # stop line means a back-out or a tailgater; neither passage can be trusted.
            log.warning("lane %s: entry loop again before %s reached the stop line", self.id, self._arriving.id)
            await self._finish(self._arriving, cancelled=True)
            ambiguous = True
        passage = self._new_passage(now, ambiguous=ambiguous)
        if self._current is not None:
            self._current.ocr_closed = True  # reads from now on belong to the new vehicle
        passage.front_unseen = front_unseen
        self._arriving = passage
        # Reads of the pre-arrival window belong to the vehicle now arriving.
        horizon = now - self._config.timeouts.pre_arrival_s
        for obs in list(self._buffer):
            if obs.received >= horizon:
                self._add_read(passage, obs)
        self._buffer.clear()
        log.info("lane %s: vehicle arriving, transaction %s%s", self.id, passage.id,
                 " (ambiguous)" if ambiguous else "")

    async def _reversed_out(self, cur: Passage) -> None:
        log.info("lane %s: %s reversed out of the lane", self.id, cur.id)
        if cur.phase is Phase.RELEASED:
            self._abort(cur)
        else:
            await self._finish(cur, cancelled=cur.phase is not Phase.STOPPED)

    async def _stop_rose(self, now: float) -> None:
        cur = self._current
        gap = self._stop_fell_at is not None and now - self._stop_fell_at < self._config.timeouts.entry_gap_s
        if cur is not None:
            if cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED):
                behind = self._arriving
                if behind is not None and cur.stop_clear_since is not None and not gap:
                    # The vehicle in front left the stop line and another one is in the scan zone
                    # behind it: whoever is on the stop loop now may be either. Neither passage is
                    # vouched for; a release in front is withdrawn before anyone drives under it.
                    log.warning("lane %s: a vehicle on the stop line after %s left it, with %s behind: "
                                "both cancelled", self.id, cur.id, behind.id)
                    self._distrust(behind)
                    if cur.phase is Phase.RELEASED:
                        self._abort(cur)
                    else:
                        # A vehicle held at the barrier that left the stop line ends as decided.
                        await self._finish(cur, cancelled=cur.phase is not Phase.STOPPED)
                    return
                cur.stop_clear_since = None  # the same vehicle rolled back onto the loop
                return
            if gap:
                return  # the trailer of the vehicle passing the barrier
            # The previous vehicle is under the barrier or gone: this is the next one.
            if self._arriving is not None:
                self._arriving.stop_pending = True
                self._arriving.at_stop = now
            else:
                await self._vehicle_without_arrival(now)
            return
        passage = self._arriving
        if passage is None:
            await self._vehicle_without_arrival(now)
            return
        self._arriving = None
        if passage.ambiguous:
            self._current = passage
            await self._finish(passage, cancelled=True)
            return
        passage.at_stop = now
        self._current = passage
        self._reached_stop_line(passage)

    async def _vehicle_without_arrival(self, now: float) -> None:
        """A vehicle at the stop line that never crossed the entry loop: its evidence is unknown."""
        log.warning("lane %s: vehicle at the stop line without an arrival: transaction cancelled", self.id)
        passage = self._new_passage(now, ambiguous=True)
        await self._publish_cancelled(passage)

    def _stop_fell(self, now: float) -> None:
        self._stop_fell_at = now
        cur = self._current
        if cur is not None and cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED, Phase.RELEASED):
            cur.stop_clear_since = now

    def _safety_rose(self, now: float) -> None:
        self._safety_clear_since = None
        cur = self._current
        if cur is None:
            return
        if cur.phase is Phase.RELEASED and cur.authorized_up:
            self._passing(cur)
        elif cur.phase is Phase.PASSING:
            cur.safety_clear_since = None
        elif cur.phase is Phase.LOWERING:
            log.warning("lane %s: vehicle under the barrier while it is lowering (PLC interlock holds it)", self.id)

    def _passing(self, cur: Passage) -> None:
        """The released vehicle is seen going on, under the barrier or past it."""
        cur.safety_seen = True
        cur.stop_clear_since = None
        self._to_phase(cur, Phase.PASSING)
        behind = self._arriving
        if behind is not None and behind.front_unseen is cur:
            behind.front_unseen = None

    def _exit_rose(self, now: float) -> None:
        """The exit detector sees a vehicle past the barrier."""
        cur = self._current
        if cur is None:
            return
        if cur.phase is Phase.PASSING:
            cur.exit_seen = True
        elif (cur.phase is Phase.RELEASED and cur.authorized_up and cur.stop_clear_since is not None
              and self._image is not None and self._image.inputs["barrier_up"]):
            # It left the stop line with the barrier open and is past it: it went through, even if
            # the safety loop did not show it (a pulse shorter than a poll).
            log.info("lane %s: %s seen by the exit detector: passed", self.id, cur.id)
            self._passing(cur)
            cur.exit_seen = True
            if not self._image.loop_safety:
                # Whenever it crossed the arm unseen, clear_s counts from now.
                self._safety_clear_since = cur.safety_clear_since = now

    def _attach(self, obs: OcrObservation | ScanObservation) -> None:
        accepting = [p for p in (self._current, self._arriving)
                     if p is not None and p.phase in (Phase.ARRIVING, Phase.COLLECTING)
                     and p.decision_started is None]
        if isinstance(obs, ScanObservation):
            # The scanner sits between the entry loop and the stop line, so a scan can only belong
            # to a vehicle that had arrived before the scan ended.
            candidates = [p for p in accepting if p.arrived <= obs.scan_end]
            if not candidates:
                # A passage decided but not yet carried out takes no evidence; a scan of its own it
                # already has, so a second one means two vehicles it took for one (below).
                candidates = [p for p in (self._current, self._arriving)
                              if p is not None and p.scan is not None and p.arrived <= obs.scan_end
                              and p.phase in (Phase.ARRIVING, Phase.DECIDING)]
            if not candidates:
                log.warning("lane %s: scan %s ended with no vehicle collecting evidence: ignored",
                            self.id, obs.scan_id)
                return
            target = max(candidates, key=lambda p: p.arrived)
            if target.scan is not None:
                # One scan per vehicle: a second one for the same passage means a second vehicle
                # crossed the entry loop inside the trailer gap (entry_gap_s) of the first and was
                # taken for its trailer. Which reads are whose is unknown: neither is vouched for.
                log.warning("lane %s: second scan %s for %s (first %s): two vehicles taken for one, "
                            "transaction cancelled", self.id, obs.scan_id, target.id, target.scan.scan_id)
                self._distrust(target)
                return
            target.scan = obs
            return
        readers = [p for p in accepting if not p.ocr_closed]
        before = [p for p in readers if p.arrived <= obs.received]
        if before:
            self._add_read(max(before, key=lambda p: p.arrived), obs)
            return
        early = [p for p in readers if obs.received >= p.arrived - self._config.timeouts.pre_arrival_s]
        if early:
            self._add_read(min(early, key=lambda p: p.arrived), obs)
            return
        self._buffer.append(obs)
        horizon = self._clock() - self._config.timeouts.pre_arrival_s
        while self._buffer and self._buffer[0].received < horizon:
            self._buffer.popleft()

    def _add_read(self, passage: Passage, obs: OcrObservation) -> None:
        if obs.kind == "plate":
            passage.plate_reads.append(obs)
        else:
            passage.container_reads.append(obs)
        passage.last_read = max(passage.last_read or obs.received, obs.received)

    def _evidence_complete(self, passage: Passage, now: float) -> bool:
        """Scan in (scanner lanes) and the OCR reads quiet for ``ocr_settle_s``.

        On a scanner lane the OCR portal and the scanner sit before the stop line: with the scan
        in, the vehicle is past both, so the quiet time counts from its last read (or its arrival)
        and the evidence is usually complete while it still drives to the stop line. A lane
        without a scanner has no sign that the vehicle passed the portal but the stop line, so
        the quiet time counts from there at the earliest.
        """
        if self._config.scanner and passage.scan is None:
            return False
        if passage.ocr_closed:
            return True
        if self._config.scanner:
            base = passage.arrived
        elif passage.at_stop is None:
            return False
        else:
            base = passage.at_stop
        quiet_since = max(base, passage.last_read or base)
        return now - quiet_since >= self._config.timeouts.ocr_settle_s

    def _start_decision(self, passage: Passage) -> None:
        """Ask the decider; a vehicle not yet at the stop line stays ``arriving`` meanwhile."""
        if passage is self._current:
            self._to_phase(passage, Phase.DECIDING)
        passage.ocr_closed = True
        passage.decision_started = self._clock()
        passage.decision_epoch = self._mode_epoch
        evidence = PassageEvidence(
            lane=self.id,
            transaction_id=passage.id,
            has_scanner=self._config.scanner,
            max_containers=self._config.max_containers,
            container_reads=tuple(passage.container_reads),
            plate_reads=tuple(passage.plate_reads),
            scan=passage.scan,
            plc_fault=self._mode is Mode.FAULT,
        )
        passage.decider = asyncio.create_task(self._decide(passage, evidence), name=f"decide-{passage.id}")

    async def _decide(self, passage: Passage, evidence: PassageEvidence) -> None:
        outcome: DecisionOutcome | None = None
        try:
            async with asyncio.timeout(self._config.timeouts.decision_s):
                outcome = await self._decider.decide(evidence)
        except TimeoutError:
            outcome = None
        except Exception:
            # The Decider contract says it never raises; if it does, the passage still gets a
            # (non-release) decision instead of hanging the lane.
            log.exception("lane %s: decider failed for %s", self.id, passage.id)
            outcome = fallback_outcome(evidence)
        if outcome is None:
            log.error("lane %s: no decision for %s within %.1f s", self.id, passage.id,
                      self._config.timeouts.decision_s)
            outcome = fallback_outcome(evidence)
        self._queue.put_nowait(Decided(passage, outcome))

    async def _on_decided(self, passage: Passage, outcome: DecisionOutcome) -> None:
        if passage.ambiguous:
            return  # its evidence turned out to mix two vehicles: it is only ever cancelled
        if passage is self._arriving and passage.phase is Phase.ARRIVING and passage.decider is not None:
            # Decided before the stop line: kept until the vehicle gets there. Every condition of
            # a release (mode, scan, journal) is checked then, as for a decision taken there.
            passage.decider = None
            passage.early = outcome
            passage.early_at = (self._wall(), self._clock())
            log.info("lane %s: %s decided before the stop line (%s)", self.id, passage.id, outcome.action)
            return
        if passage is not self._current or passage.phase is not Phase.DECIDING:
            return  # cancelled while the decider worked
        passage.decider = None
        passage.early = None
        passage.outcome = outcome
        action: Action = outcome.action
        reasons = list(outcome.reasons)
        if action == "release":
            forced = None
            if self._mode is not Mode.AUTOMATIC or passage.decision_epoch != self._mode_epoch:
                forced = "PLC_FAULT" if (self._mode is Mode.FAULT or not self._link_up) else "MANUAL_OVERRIDE"
            elif self._config.scanner and passage.scan is None:
                forced = "NO_SCAN"
            elif self._config.scanner and passage.scan is not None and not passage.scan.complete:
                forced = "SCAN_INCOMPLETE"
            if forced is not None:
                log.warning("lane %s: release of %s not carried out (%s): manual", self.id, passage.id, forced)
                action = "manual"
                reasons.append(forced)
        now = self._clock()
        decided_wall, decided_mono = passage.early_at or (self._wall(), now)
        scan_end = passage.scan.scan_end if passage.scan is not None else None
        passage.record.decide(action=action, reasons=reasons, now=decided_wall, now_mono=decided_mono,
                              containers=outcome.containers, plate=outcome.plate, scan=outcome.scan,
                              scan_end_mono=scan_end)
        committed = await self._open(passage)
        unfamiliar = outcome.extra.get("review_unfamiliar")
        if unfamiliar is not None:
            await self._review_unfamiliar(passage, unfamiliar, now)
        if not committed and action == "release":
            action = "manual"
            passage.record.action = "manual"
        if action == "release":
            passage.authorized_up = True
            passage.released_at = now
            self.counters["released"] += 1
            self._to_phase(passage, Phase.RELEASED)
            log.info("lane %s: %s released", self.id, passage.id)
        else:
            self.counters["stopped"] += 1
            self._to_phase(passage, Phase.STOPPED)
            log.info("lane %s: %s %s (%s)", self.id, passage.id, action, ", ".join(passage.record.reasons))

    async def _check_timers(self) -> None:
        now = self._clock()
        t = self._config.timeouts
        arriving = self._arriving
        if arriving is not None and now - arriving.arrival_base >= t.arrival_s and not arriving.stop_pending:
            log.info("lane %s: %s never reached the stop line: cancelled", self.id, arriving.id)
            await self._finish(arriving, cancelled=True)
        arriving = self._arriving
        if (arriving is not None and self._config.scanner and not arriving.ambiguous and self._mode is Mode.AUTOMATIC
                and arriving.decision_started is None and self._evidence_complete(arriving, now)):
            self._start_decision(arriving)  # carried out when the vehicle reaches the stop line
        cur = self._current
        if cur is None:
            return
        if cur.ambiguous:
            await self._finish(cur, cancelled=True)
            return
        if cur.phase in (Phase.COLLECTING, Phase.DECIDING, Phase.STOPPED) and cur.stop_clear_since is not None \
                and now - cur.stop_clear_since >= t.backout_s:
            if cur.phase is Phase.STOPPED:
                log.info("lane %s: %s left the stop line", self.id, cur.id)
                await self._finish(cur, cancelled=False)
            else:
                log.info("lane %s: %s backed out before its decision: cancelled", self.id, cur.id)
                await self._finish(cur, cancelled=True)
            return
        if cur.phase is Phase.COLLECTING:
            assert cur.at_stop is not None
            if self._evidence_complete(cur, now) or now - cur.at_stop >= t.collect_s:
                self._start_decision(cur)
        elif cur.phase is Phase.STOPPED:
            if now - cur.since >= t.hold_s:
                log.info("lane %s: %s waited %.0f s at the barrier: closed as manual", self.id, cur.id, t.hold_s)
                cur.record.action = "manual"
                await self._finish(cur, cancelled=False)
        elif cur.phase is Phase.RELEASED:
            assert cur.released_at is not None
            backed_out = cur.stop_clear_since is not None and now - cur.stop_clear_since >= t.backout_s
            if now - cur.released_at >= t.pass_s or backed_out:
                log.info("lane %s: %s released but did not pass: lowering", self.id, cur.id)
                self._abort(cur)
        elif cur.phase is Phase.PASSING:
            clear = cur.safety_clear_since is not None and now - cur.safety_clear_since >= t.clear_s
            # With exit detection the vehicle must have reached the exit detector; if the detector
            # never sees it, pass_s bounds how long the barrier stays up.
            exit_ok = not self._config.exit_detection or cur.exit_seen or now - cur.since >= t.pass_s
            if clear and exit_ok:
                self._to_phase(cur, Phase.LOWERING)

    async def _review_unfamiliar(self, passage: Passage, evidence: Mapping[str, Any], now: float) -> None:
        """The image review called a scan of this lane unlike anything its model was trained on.
        One such scan is decided manual and is no news; a scanner that drifted, was replaced or
        was never part of the training world produces them all day. The alarm is raised at most
        once per `UNFAMILIAR_ALARM_S` per lane (momentary: no clearing event) and says how many
        unfamiliar scans the lane had since the last one."""
        self._unfamiliar_since_alarm += 1
        self.counters["review_unfamiliar"] += 1
        if self._unfamiliar_alarm_at is not None and now - self._unfamiliar_alarm_at < UNFAMILIAR_ALARM_S:
            return
        detail = {"transaction_id": passage.id, **evidence, "unfamiliar_scans": self._unfamiliar_since_alarm,
                  "window_s": UNFAMILIAR_ALARM_S}
        self._unfamiliar_alarm_at = now
        self._unfamiliar_since_alarm = 0
        log.warning("lane %s: scan %s unlike the review model's training: %s", self.id,
                    evidence.get("scan_id"), evidence.get("reason"))
        await self._event("alarm", "REVIEW_UNFAMILIAR", "warning", True, detail)
