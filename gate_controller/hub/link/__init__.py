"""The MQTT session with the hub: connect, birth/death, publish the outbox, receive notices and commands.

Durability lives in the `Outbox`; this module only moves rows to the broker and deletes them once
the broker acknowledged them. What it relies on, and what it deliberately does not:

* **A fresh paho client per connection.** paho keeps unacknowledged QoS 1 messages in memory and
  re-sends them on its own reconnect, with the same 16-bit ``mid``s our bookkeeping uses. A new
  client for every session (``reconnect_on_failure=False``) means paho's queue dies with the
  connection; the outbox rows are the only copy that matters, and ``is_published()`` is never
  consulted.
* **PUBACK -> row mapping by mid, per session.** paho assigns ``mid`` at ``publish()``; the map
  ``mid -> row id`` is owned by the event loop, and paho callbacks reach it only through
  ``loop.call_soon_threadsafe``, so a PUBACK processed by the loop always finds its entry (the
  loop cannot run the callback before ``publish()`` has returned and the entry exists). Mids are
  16-bit and reused, so a collision with an entry still waiting ends the session instead of
  guessing (nothing is deleted without a certain PUBACK), and publishing pauses before the
  counter could lap the oldest message still waiting.
* **A bounded window** (``mqtt.max_inflight``) of rows awaiting PUBACK. Rows are deleted only on
  PUBACK (QoS 0 telemetry: once paho wrote it). On a disconnect every row in flight simply stays
  in the outbox and is sent again after the reconnect, then with ``historical: true``.
* **Backlog and live together.** At each CONNACK the highest row id is the boundary: rows up to it
  are the backlog (drained by drop class: transactions/events/replies in ``seq`` order, then media,
  then telemetry), rows after it are live; the window alternates between the two so a long
  backlog never delays a new transaction by more than one slot.
* **Our own reconnect loop** with capped exponential backoff and jitter, around the first connect
  too; TLS with CA and optional client certificate; username + password file; the Will set at
  every CONNECT; birth after every CONNACK and on ``rebirth``; a clean shutdown publishes the
  ``shutdown`` status, waits for its PUBACK and disconnects cleanly (so the broker drops the Will).

Where it lives: the link with its reconnect loop, birth and death (`link`), one connection's
client, TLS and in-flight bookkeeping (`session`), the outbox-to-broker pump with PUBACKs and
deletions (`publisher`), notices and commands from the hub (`inbound`), and what the daemon hands
in and gets back (`interfaces`).
"""

from __future__ import annotations

from gate_controller.hub.link.interfaces import (
    SCAN_ID_PATTERN,
    BirthInfo,
    CommandHandler,
    HubStatus,
    ModelSink,
    NoticeSink,
)
from gate_controller.hub.link.link import HubLink

__all__ = [
    "SCAN_ID_PATTERN",
    "BirthInfo",
    "CommandHandler",
    "HubLink",
    "HubStatus",
    "ModelSink",
    "NoticeSink",
]
