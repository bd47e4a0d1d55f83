"""The console section: off by default, and never open off loopback without a login."""

from __future__ import annotations

import pytest

from gate_controller.config import ConfigError, parse_config
from gate_controller.config.console import ConsoleConfig, split_listen
from tests.gate_controller.config.test_schema import BASE


def with_console(block: str) -> str:
    return BASE + "console:\n" + block


def issues(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [(i.line, i.path, i.message) for i in info.value.issues]


def test_console_is_off_by_default() -> None:
    config = parse_config(BASE)
    assert config.console.listen is None
    assert config.console.allow_commands is False
    assert config.console.url is None


def test_loopback_without_auth_is_allowed() -> None:
    config = parse_config(with_console("  listen: 127.0.0.1:47880\n"))
    assert config.console.address == ("127.0.0.1", 47880)
    assert config.console.url == "http://127.0.0.1:47880/"
    assert parse_config(with_console("  listen: '[::1]:47880'\n")).console.address == ("::1", 47880)


@pytest.mark.parametrize("listen", ["0.0.0.0:47880", "192.168.10.5:47880", "'[::]:47880'", "gate-pc.local:80"])
def test_non_loopback_address_needs_auth(listen: str) -> None:
    text = with_console(f"  listen: {listen}\n")
    found = issues(text)
    line = text.count("\n", 0, text.index("  listen:")) + 1
    assert any(ln == line and p == "console.listen" and "needs auth" in m for ln, p, m in found), found


def test_non_loopback_address_with_auth_is_allowed() -> None:
    config = parse_config(with_console(
        "  listen: 0.0.0.0:47880\n  auth:\n    password_hash_file: console-password\n"))
    assert config.console.auth is not None
    assert config.console.auth.username == "technician"


def test_commands_need_auth() -> None:
    found = issues(with_console("  listen: 127.0.0.1:47880\n  allow_commands: true\n"))
    assert any(p == "console.allow_commands" and "logged-in" in m for _, p, m in found), found


@pytest.mark.parametrize(("listen", "fragment"), [
    ("47880", "host:port"), ("127.0.0.1:0", "port must be"), ("127.0.0.1:http", "port must be"),
    ("::1:47880", "brackets"),
])
def test_bad_listen_addresses(listen: str, fragment: str) -> None:
    found = issues(with_console(f"  listen: '{listen}'\n"))
    assert any(p == "console.listen" and fragment in m for _, p, m in found), found
    with pytest.raises(ValueError, match=fragment):
        split_listen(listen)


def test_tls_makes_an_https_url() -> None:
    console = ConsoleConfig.model_validate({
        "listen": "127.0.0.1:8443", "tls": {"cert_file": "c.pem", "key_file": "k.pem"},
    }, strict=False)
    assert console.url == "https://127.0.0.1:8443/"
