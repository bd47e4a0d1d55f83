"""The durable outbox: every message for the hub is committed here before anything else happens.

MQTT contract section 2: a transaction or event is committed and fsynced *before* the barrier
moves for it and before it is published, and leaves local storage only after the broker's
PUBACK. SQLite in WAL mode gives that with one file:

* ``outbox`` rows hold each message exactly as it will be published. Transactions and events get
  their ``msg_id`` (ULID), ``seq`` and ``boot_id`` in the same SQL transaction that stores them,
  so ``seq`` can never be consumed without its message existing (no gap) nor reused (the
  counter lives in the same database, committed together). ``historical`` is decided at publish
  time, so it is spliced in by the publisher (`OutboxRow.wire_payload`).
* ``open_transactions`` is the journal of decisions whose passage is still in progress. A record
  that is still open when the daemon starts is completed by `Outbox.open` as cancelled by the
  restart, in the same SQL transaction that removes it from the journal: it reaches the hub once.
* ``meta`` keeps ``next_seq``, ``boot_id`` and the ``BACKLOG_FULL`` alarm state.

Transactions and events are committed with ``synchronous=FULL`` (fsync at every commit);
previews, telemetry, images and replies, which the contract lets us lose, and the deletions after
PUBACK (a lost deletion only means a duplicate, which the hub removes by ``msg_id``) use
``synchronous=NORMAL``. All writes go through one writer thread that commits whatever has queued
up as one SQL transaction (group commit), so concurrent lanes share an fsync instead of queueing
behind each other; reads for the publisher use a second connection on a reader thread (WAL
readers never block the writer).

Backlog limits (``mqtt.backlog``): at most ``max_telemetry`` telemetry rows and ``max_previews``
preview/image rows are kept (oldest dropped first). When the backlog exceeds ``max_mb`` or free
disk falls below ``min_free_disk_mb``, telemetry is dropped first, then previews and images;
transactions, events and command replies are never dropped. When transactions and events reach
``max_messages``, or space stays short after the drops, a ``BACKLOG_FULL`` alarm is committed (in
the same SQL transaction) and the outbox keeps accepting transactions until the disk itself is
full, at which point commits fail with `OutboxError` and the lane must not move the barrier. The
alarm clears (``active: false``) once everything is back under 90 % of its limit.

Where it lives: the messages and rows (`rows`), the SQLite write side with the backlog limits
(`store`), the journal records (`journal`) and the `Outbox` with its writer and reader threads
(`outbox`).
"""

from __future__ import annotations

from gate_controller.hub.outbox.outbox import Outbox
from gate_controller.hub.outbox.rows import TRANSACTION_SCHEMA, BacklogStats, Committed, Kind, OutboxRow

__all__ = [
    "TRANSACTION_SCHEMA",
    "BacklogStats",
    "Committed",
    "Kind",
    "Outbox",
    "OutboxRow",
]
