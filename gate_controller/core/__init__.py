"""What every subsystem of the gate shares: the exception tree, timestamps, atomic file writes and
the ports (the typed values that cross between the lane, the decision and the hub link).

Imports nothing else from ``gate_controller``.
"""
