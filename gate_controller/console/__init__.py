"""The technician console: a local web page of the gate, served by the daemon on its own event loop.

Pages: overview (lanes, PLC points, links, hub link, model), live transaction feed, transaction
detail, alarms, diagnostics; with ``console.allow_commands`` a logged-in user sets lane modes and
opens or closes barriers through the hub command path. Sits below ``service`` (which composes it)
and above ``hub`` and ``lane``; it reads their state and never owns any of it.
"""
