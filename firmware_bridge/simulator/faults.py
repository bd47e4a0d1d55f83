"""What the virtual firmware gets wrong on purpose: the faults real serial links and firmware show.

Kept free of heavy imports: the CLI builds its scenario list from this at parser time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["FaultConfig"]


@dataclass(frozen=True)
class FaultConfig:
    """Rates are probabilities per frame sent; all zero means a clean link."""

    bit_flip_rate: float = 0.0
    """One random bit of the frame is inverted (the receiver must drop the frame by CRC)."""
    drop_frame_rate: float = 0.0
    """The frame is not sent at all; its sequence number is still used (a counted gap)."""
    drop_lines_rate: float = 0.0
    """A SCAN_LINES frame of a first transmission is lost (answers to RESEND are not): forces RESEND."""
    garbage_rate: float = 0.0
    """A burst of line noise (sometimes holding false magics) goes out before the frame."""
    garbage_max_bytes: int = 48
    truncate_rate: float = 0.0
    """Only a prefix of the frame is sent (a glitch mid-frame)."""
    duplicate_lines_rate: float = 0.0
    """A SCAN_LINES frame is sent twice (first good copy wins)."""
    shuffle_lines: bool = False
    """SCAN_LINES frames of a scan go out in random order."""
    bad_data_crc_rate: float = 0.0
    """SCAN_END carries a wrong ``data_crc32`` (the scan must end incomplete)."""
    abort_rate: float = 0.0
    """The scan is aborted half way with SCAN_ABORT."""
    link_drop_interval_s: float | None = None
    """Every so many seconds the link is lost for ``link_drop_duration_s``."""
    link_drop_duration_s: float = 6.0
    fault_interval_s: float | None = None
    """Every so many seconds a FAULT is raised and cleared again a few seconds later."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
