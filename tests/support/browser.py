"""Headless Chromium from Debian (`apt-get install chromium`), driven by playwright-python.

Playwright's own browser download is never used: the tests launch the distribution's binary with
a fresh profile, flags that keep it off the network, and no sandbox when running as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["CHROMIUM", "chromium", "chromium_available"]

CHROMIUM = os.environ.get("SMARTGATE_CHROMIUM", "/usr/bin/chromium")
_FLAGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_available() -> bool:
    if not Path(CHROMIUM).exists():
        return False
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    """A Playwright `BrowserContext` on Debian's chromium with a fresh profile directory."""
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="smartgate-chromium-")
    flags = list(_FLAGS)
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=flags, viewport={"width": 1280, "height": 900})
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
