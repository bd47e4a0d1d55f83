"""The link to the central hub: the durable outbox, the MQTT session, signed commands, telemetry,
the scan archive, the JSON schemas of the contract, and the hub-side client used by tools and tests.

May import ``core``, ``config`` and ``decision`` (signing, notices); never the lane or the service.
"""
