"""Suite-wide fixtures. Area-specific fixtures live in tests/support/ and are imported where used."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads behind (paho loops, serial readers, executors)."""
    before = set(threading.enumerate())
    yield
    deadline_threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in deadline_threads:
        thread.join(timeout=5.0)
    leaked = [t.name for t in deadline_threads if t.is_alive() and not t.daemon]
    assert not leaked, f"test leaked threads: {leaked}"
