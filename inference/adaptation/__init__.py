"""Site adaptation without retraining the network: input envelope, normal-traffic model on the
network's own outputs, threat image projection and threshold calibration (docs/commissioning.md)."""

from inference.adaptation.envelope import ENVELOPE_FILE, Envelope, input_statistics

__all__ = ["ENVELOPE_FILE", "Envelope", "input_statistics"]
