"""Hub lane modes kept across restarts (`gate_controller.lane.modes`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gate_controller.lane.modes import LaneModeStore


def test_missing_file_means_every_lane_auto(tmp_path: Path) -> None:
    store = LaneModeStore(tmp_path / "lane_modes.json")
    assert store.load(["L1", "L2"]) == {"L1": "auto", "L2": "auto"}
    assert not store.path.exists()


def test_modes_round_trip_and_auto_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "lane_modes.json"
    store = LaneModeStore(path)
    store.load(["L1", "L2"])
    store.save("L1", "closed")
    store.save("L2", "manual")
    assert json.loads(path.read_text()) == {"L1": "closed", "L2": "manual"}
    assert LaneModeStore(path).load(["L1", "L2"]) == {"L1": "closed", "L2": "manual"}
    store.save("L2", "auto")
    assert json.loads(path.read_text()) == {"L1": "closed"}
    assert not path.with_name(path.name + ".tmp").exists()
    assert LaneModeStore(path).load(["L1", "L2", "L3"]) == {"L1": "closed", "L2": "auto", "L3": "auto"}
    with pytest.raises(ValueError, match="unknown lane mode"):
        store.save("L1", "open")  # type: ignore[arg-type]


def test_a_lane_no_longer_configured_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lane_modes.json"
    path.write_text(json.dumps({"L1": "closed", "L9": "manual"}))
    with caplog.at_level(logging.WARNING):
        assert LaneModeStore(path).load(["L1"]) == {"L1": "closed"}
    assert "lane L9 is not configured" in caplog.text
    assert "lane L1: starts in hub mode closed" in caplog.text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"L1": "open"}', '{"L1": 3}', "\xff\xfe"])
def test_an_unreadable_file_starts_every_lane_manual(tmp_path: Path, content: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lane_modes.json"
    path.write_bytes(content.encode("latin-1"))
    with caplog.at_level(logging.ERROR):
        modes = LaneModeStore(path).load(["L1", "L2"])
    assert modes == {"L1": "manual", "L2": "manual"}  # never auto: a closed lane must not reopen by itself
    assert str(path) in caplog.text
    assert "delete the file" in caplog.text
    assert path.read_bytes() == content.encode("latin-1")  # the evidence is left for the technician
