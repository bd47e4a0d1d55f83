"""The review model's life cycle on the gate: shadow mode, the shadow report, model packages from the
fleet (install, canary, switch, watch, rollback), drift alarms and samples back to the hub.

Sits above ``hub`` and ``lane`` (it emits events through the outbox and reads the archive's
labelled samples) and below ``service``, which composes it into the daemon.
"""

from gate_controller.lifecycle.fleet import ModelManager
from gate_controller.lifecycle.modes import REVIEW_MODES, ReviewModes
from gate_controller.lifecycle.report import shadow_report, wilson

__all__ = ["REVIEW_MODES", "ModelManager", "ReviewModes", "shadow_report", "wilson"]
