"""The console's web server: an aiohttp application that runs on the daemon's own event loop.

It reads the daemon's state through `ConsoleSources` (plain callables the daemon hands in) and the
`GateWatch` the daemon feeds; it owns no lock the lanes use and waits on nothing the lanes wait on.
Commands go through the daemon's command dispatcher (the path of hub commands), never to a lane
or the PLC directly.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from firmware_bridge.link import FrameNote
from gate_controller.config import ConsoleConfig, read_secret
from gate_controller.console import pages
from gate_controller.console.auth import Authenticator, LoginLimiter, SessionStore, check_hash
from gate_controller.console.watch import GateWatch
from gate_controller.decision.identity import IdentitySettings
from gate_controller.hub.commands import LocalResult

__all__ = ["ConsoleServer", "ConsoleSources", "LocalCommand"]

log = logging.getLogger(__name__)

LocalCommand = Callable[[str, Mapping[str, Any], str, str], Awaitable[LocalResult]]
"""``(name, args, issued_by, source)``: the dispatcher's `handle_local`."""


@dataclass(frozen=True)
class ConsoleSources:
    """Read-only views of the daemon, and the one way in for commands."""

    status: Callable[[], Mapping[str, Any]]
    """What `smartgate status` shows (lanes, links, hub, backlog, inference)."""
    model: Callable[[], Mapping[str, Any] | None]
    """The image review model: name, version, sha256, each lane's review mode, the live watch."""
    frames: Callable[[], Mapping[str, Sequence[FrameNote]]]
    """The last frames of each firmware link."""
    doctor: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]
    """Read-only `smartgate doctor` checks that are safe while the daemon runs."""
    identity_settings: Callable[[], IdentitySettings]
    """The running policy's identity settings (what the transaction detail explains with)."""
    command: LocalCommand | None = None
    """Runs a console command; None when ``console.allow_commands`` is off."""


class ConsoleServer:
    def __init__(self, config: ConsoleConfig, *, sources: ConsoleSources, watch: GateWatch, site: str,
                 gate: str, config_dir: Path) -> None:
        if config.listen is None:
            raise ValueError("the console is off (console.listen is null)")
        self.config = config
        self.sources = sources
        self.watch = watch
        self.site = site
        self.gate = gate
        self.config_dir = config_dir
        self.auth: Authenticator | None = None
        if config.auth is not None:
            raw = read_secret(config.auth.password_hash_file, base_dir=config_dir)
            self.auth = Authenticator(config.auth.username,
                                      check_hash(raw, where=str(config.auth.password_hash_file)))
        ttl = config.auth.session_ttl_s if config.auth is not None else 3600.0
        self.sessions = SessionStore(ttl)
        self.limiter = LoginLimiter(config.auth.login_attempts if config.auth else 5,
                                    config.auth.login_window_s if config.auth else 60.0)
        self._runner: web.AppRunner | None = None
        self.app = pages.build_app(self)

    @property
    def secure_cookies(self) -> bool:
        return self.config.tls is not None

    @property
    def commands_enabled(self) -> bool:
        return self.config.allow_commands and self.sources.command is not None and self.auth is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert = tls.cert_file if tls.cert_file.is_absolute() else self.config_dir / tls.cert_file
        from gate_controller.config import resolve_secret_path

        key = resolve_secret_path(tls.key_file, base_dir=self.config_dir)
        context.load_cert_chain(str(cert), str(key))
        return context

    async def start(self) -> None:
        address = self.config.address
        assert address is not None
        host, port = address
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context(), reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("console listening on %s", self.config.url)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
