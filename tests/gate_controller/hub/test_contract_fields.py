"""Contract points the gate settles itself (docs/mqtt-contract.md, spec notes): `historical` and lane status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gate_controller.hub.hub_side import contract_errors, contract_schema
from gate_controller.hub.outbox import Outbox
from gate_controller.hub.telemetry import Telemetry, TelemetrySnapshot
from tests.support.hub import GATE, ROOT, SITE

REPO = Path(__file__).resolve().parents[3]


def test_historical_has_one_meaning_that_covers_the_first_connect() -> None:
    descriptions = {name: contract_schema(name)["properties"]["historical"]["description"]
                    for name in ("transaction", "event")}
    assert descriptions["transaction"] == descriptions["event"]
    text = descriptions["event"]
    assert "before the first connect of a boot" in text
    assert "false when committed while connected and sent live" in text
    guide = (REPO / "docs" / "mqtt-contract.md").read_text(encoding="utf-8")
    assert "before the very first connect of a boot" in guide


def test_telemetry_gives_phase_and_mode_apart_and_keeps_the_old_field(tmp_path: Path) -> None:
    def snapshot() -> TelemetrySnapshot:
        return TelemetrySnapshot(
            links={}, lanes={"L1": "deciding", "L2": "closed"},
            lane_status={"L1": {"phase": "deciding", "mode": "automatic"},
                         "L2": {"phase": "idle", "mode": "closed"}},
        )

    async def main() -> dict[str, object]:
        outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE)
        try:
            telemetry = Telemetry(snapshot=snapshot, outbox=outbox, publish=outbox.enqueue_telemetry,
                                  interval_s=1.0, disk_path=tmp_path)
            return await telemetry.collect()
        finally:
            outbox.close()

    payload = asyncio.run(main())
    assert contract_errors(f"{ROOT}/telemetry", json.dumps(payload).encode()) == []
    assert payload["lane_status"] == {"L1": {"phase": "deciding", "mode": "automatic"},
                                      "L2": {"phase": "idle", "mode": "closed"}}
    assert payload["lanes"] == {"L1": "deciding", "L2": "closed"}
    broken = {**payload, "lane_status": {"L1": {"phase": "closed", "mode": "automatic"}}}
    assert contract_errors(f"{ROOT}/telemetry", json.dumps(broken).encode()), "a mode is not a phase"
