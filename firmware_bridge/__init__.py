"""GFP/1 serial links to the gate firmware: frames, scan assembly, events, and the firmware simulator."""

__all__: list[str] = []
