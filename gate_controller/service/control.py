"""The daemon's local control socket: `smartgate status` reads a JSON snapshot from it.

A Unix stream socket (mode 0660, in the runtime directory) rather than a TCP port: it needs no
address family beyond AF_UNIX, and file permissions decide who may look. One request per
connection: the client sends ``status\\n`` and reads one JSON document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ControlServer", "read_status"]

log = logging.getLogger(__name__)

MAX_REQUEST = 256


class ControlServer:
    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._path = path
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self._path))
        os.chmod(self._path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(2.0):
                request = (await reader.readline())[:MAX_REQUEST].strip()
            if request in (b"", b"status"):
                body = json.dumps(self._snapshot(), default=str, sort_keys=True).encode()
            else:
                body = json.dumps({"error": f"unknown request {request[:32]!r}"}).encode()
            writer.write(body + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as err:
            log.debug("control client went away: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def read_status(path: Path, timeout_s: float = 3.0) -> dict[str, Any]:
    """Ask a running daemon for its snapshot (blocking; used by the CLI)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(b"status\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise TypeError("daemon answered something other than a JSON object")
    return data
