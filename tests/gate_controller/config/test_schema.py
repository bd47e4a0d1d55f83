"""The config schema: shipped files are valid, every broken file is reported where it is broken."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gate_controller.config import GateConfig, load_config, parse_config, read_secret, redacted_dump
from gate_controller.core.errors import ConfigError
from tests.support.configs import DEMO, EXAMPLE, leaves, replace_span, wrong_type_literal

BASE = textwrap.dedent(
    """\
    site: PORTA
    gate: G01
    links:
      - name: scan1
        url: /dev/ttyUSB0
        baudrate: 921600
      - name: ocr1
        url: socket://127.0.0.1:4001
    lanes:
      - id: L1
        scanner: true
        links: [scan1, ocr1]
        plc:
          transport: tcp
          host: 127.0.0.1
          port: 502
    mqtt:
      url: mqtts://hub.example:8883
      tls:
        ca_file: /etc/smartgate/ca.pem
      username: gate
      password_file: mqtt-password
      command_key_file: command-key
    """
)


def issues_of(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="site.yaml")
    return [(i.line, i.path, i.message) for i in info.value.issues]


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_is_valid_and_fills_defaults() -> None:
    config = parse_config(BASE)
    assert config.links[0].link_timeout_s == 5.0
    assert config.lanes[0].plc.points.loop_safety.address == 2
    assert config.lanes[0].plc.timeout_s == 0.5
    assert config.client_id == "smartgate-PORTA-G01"
    assert config.root_topic == "smartgate/v1/PORTA/G01"
    assert config.mqtt.port == 8883


@pytest.mark.parametrize("path", [EXAMPLE, DEMO], ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    assert isinstance(load_config(path), GateConfig)


# (case id, edited text, expected line, expected path, expected message fragment)
BROKEN: list[tuple[str, str, int, str, str]] = [
    ("port-range", edit("port: 502", "port: 70000"), 16, "lanes[0].plc.port",
     "must be between 1 and 65535 (got 70000)"),
    ("port-type", edit("port: 502", "port: five"), 16, "lanes[0].plc.port", "expected an integer"),
    ("port-float", edit("port: 502", "port: 502.5"), 16, "lanes[0].plc.port", "expected an integer"),
    ("port-bool", edit("port: 502", "port: true"), 16, "lanes[0].plc.port", "expected an integer"),
    ("baud-low", edit("baudrate: 921600", "baudrate: 300"), 6, "links[0].baudrate", "between 1200 and 4000000"),
    ("baud-string", edit("baudrate: 921600", "baudrate: '921600'"), 6, "links[0].baudrate", "expected an integer"),
    ("unknown-key-typo", edit("    baudrate: 921600", "    baudrat: 921600"), 6, "links[0].baudrat",
     "did you mean 'baudrate'"),
    ("unknown-top-key", BASE + "mqqt: {}\n", 24, "mqqt", "did you mean 'mqtt'"),
    ("inline-password", edit("password_file: mqtt-password", "password: hunter2"), 22, "mqtt.password",
     "did you mean 'password_file'"),
    ("inline-secret", edit("command_key_file: command-key", "command_key_file: command-key\n  secret: x"), 24,
     "mqtt.secret", "secrets are never inline"),
    ("missing-section", BASE.split("mqtt:")[0], 1, "mqtt", "required key is missing"),
    ("missing-lane-plc", edit("    plc:\n      transport: tcp\n      host: 127.0.0.1\n      port: 502\n", ""),
     10, "lanes[0].plc", "required key is missing"),
    ("missing-site", edit("site: PORTA\n", ""), 1, "site", "required key is missing"),
    ("bad-site-name", edit("site: PORTA", "site: 'PORT A'"), 1, "site", "must match"),
    ("site-int", edit("site: PORTA", "site: 12"), 1, "site", "expected a string"),
    ("duplicate-lane", BASE.replace("mqtt:", "  - id: L1\n    links: [scan1]\n    plc: {host: 10.0.0.2}\nmqtt:"),
     17, "lanes[1].id", "duplicate lane id 'L1'"),
    ("duplicate-link", edit("- name: ocr1", "- name: scan1"), 7, "links[1].name", "duplicate link name"),
    ("unknown-link", edit("links: [scan1, ocr1]", "links: [scan1, ocr2]"), 12, "lanes[0].links[1]",
     "did you mean 'ocr1'"),
    ("links-not-list", edit("links: [scan1, ocr1]", "links: scan1"), 12, "lanes[0].links", "expected a list"),
    ("parity-literal", edit("    baudrate: 921600", "    baudrate: 921600\n    parity: X"), 7, "links[0].parity",
     "must be one of"),
    ("transport-literal", edit("transport: tcp", "transport: udp"), 14, "lanes[0].plc.transport", "must be one of"),
    ("rtu-without-serial", edit("transport: tcp", "transport: rtu"), 14, "lanes[0].plc.serial_url",
     "transport rtu needs serial_url"),
    ("mqtts-without-tls", edit("  tls:\n    ca_file: /etc/smartgate/ca.pem\n", ""), 18, "mqtt.url",
     "needs a tls section"),
    ("plain-mqtt", edit("url: mqtts://hub.example:8883", "url: mqtt://hub.example:1883").replace(
        "  tls:\n    ca_file: /etc/smartgate/ca.pem\n", ""), 18, "mqtt.url", "allow_insecure"),
    ("mqtt-inline-credentials", edit("mqtts://hub.example:8883", "mqtts://u:p@hub.example:8883"), 18,
     "mqtt.url", "credentials must not be inline"),
    ("mqtt-bad-scheme", edit("mqtts://hub.example:8883", "http://hub.example"), 18, "mqtt.url",
     "scheme must be mqtt"),
    ("username-without-password", edit("  password_file: mqtt-password\n", ""), 18, "mqtt.password_file",
     "go together"),
    ("keepalive-low", edit("command_key_file: command-key", "command_key_file: command-key\n  keepalive_s: 1"),
     24, "mqtt.keepalive_s", "between 5 and 600"),
    ("serial-url-scheme", edit("url: /dev/ttyUSB0", "url: http://x"), 5, "links[0].url", "serial URL scheme"),
    ("serial-url-relative", edit("url: /dev/ttyUSB0", "url: ttyUSB0"), 5, "links[0].url", "device path"),
    ("link-timeouts", edit("    baudrate: 921600", "    baudrate: 921600\n    link_timeout_s: 1.5"), 7,
     "links[0].link_timeout_s", "twice heartbeat_interval_s"),
    ("point-table-wrong", edit("      port: 502", "      port: 502\n      points:\n        barrier_raise: "
                                "{table: discrete_input, address: 0}"), 18,
     "lanes[0].plc.points.barrier_raise.table", "table must be coil"),
    ("point-shared-address", edit("      port: 502", "      port: 502\n      points:\n        alarm: "
                                  "{table: coil, address: 0}"), 18, "lanes[0].plc.points.alarm.address",
     "already used by barrier_raise"),
    ("point-unknown", edit("      port: 502", "      port: 502\n      points:\n        loop_exit: "
                           "{table: coil, address: 9}"), 18, "lanes[0].plc.points.loop_exit", "unknown key"),
    ("register-inverted", edit("      port: 502", "      port: 502\n      points:\n        host_heartbeat: "
                               "{table: holding_register, address: 0, inverted: true}"), 18,
     "lanes[0].plc.points.host_heartbeat.inverted", "bits only"),
    ("unit-id-range", edit("      port: 502", "      port: 502\n      unit_id: 300"), 17, "lanes[0].plc.unit_id",
     "between 0 and 247"),
    ("timeout-negative", edit("      port: 502", "      port: 502\n      timeout_s: -1"), 17, "lanes[0].plc.timeout_s",
     "between 0.05 and 5.0"),
    ("lane-timeouts-unknown", edit("    scanner: true", "    scanner: true\n    timeouts: {arrive_s: 5}"), 12,
     "lanes[0].timeouts.arrive_s", "did you mean 'arrival_s'"),
    ("max-containers", edit("    scanner: true", "    scanner: true\n    max_containers: 3"), 12,
     "lanes[0].max_containers", "between 1 and 2"),
    ("scanner-not-bool", edit("scanner: true", "scanner: maybe"), 11, "lanes[0].scanner", "true or false"),
    ("empty-links", edit("links: [scan1, ocr1]", "links: []"), 12, "lanes[0].links", "too short"),
    ("duplicate-key", edit("gate: G01", "gate: G01\ngate: G02"), 3, "gate", "appears twice"),
    ("yaml-syntax", edit("links: [scan1, ocr1]", "links: [scan1, ocr1"), 13, "", "YAML syntax"),
    ("yaml-tab", edit("    baudrate: 921600", "\tbaudrate: 921600"), 6, "", "YAML syntax"),
    ("logging-level", BASE + "logging: {level: LOUD}\n", 24, "logging.level", "must be one of"),
    ("threads-range", BASE + "inference: {threads: 0}\n", 24, "inference.threads", "between 1 and 16"),
    ("prometheus-port", BASE + "telemetry: {prometheus_port: 0}\n", 24, "telemetry.prometheus_port",
     "between 1 and 65535"),
    ("same-plc-endpoint", BASE.replace("mqtt:", "  - id: L2\n    links: [ocr1]\n    plc: {host: 127.0.0.1, port: 502}\n"
                                       "mqtt:").replace("links: [scan1, ocr1]", "links: [scan1]"),
     19, "lanes[1].plc.unit_id", "already uses this PLC endpoint"),
]


@pytest.mark.parametrize(("text", "line", "path", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_is_located(text: str, line: int, path: str, fragment: str) -> None:
    found = issues_of(text)
    assert any(ln == line and p == path and fragment in m for ln, p, m in found), found


def test_at_least_25_distinct_broken_configs() -> None:
    assert len({c[0] for c in BROKEN}) >= 25


def test_all_problems_reported_at_once() -> None:
    text = edit("port: 502", "port: 70000").replace("baudrate: 921600", "baudrate: fast").replace(
        "site: PORTA", "site: 12")
    found = issues_of(text)
    assert {p for _, p, _ in found} >= {"site", "links[0].baudrate", "lanes[0].plc.port"}
    assert [ln for ln, _, _ in found] == sorted(ln for ln, _, _ in found)


def test_error_lines_are_formatted_for_editors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(edit("port: 502", "port: 70000"), source="config/site.yaml")
    assert str(info.value) == "config/site.yaml:16:13: lanes[0].plc.port: must be between 1 and 65535 (got 70000)"


def test_empty_and_non_mapping_files() -> None:
    assert issues_of("")[0][2] == "the file is empty"
    assert "mapping" in issues_of("- a\n- b\n")[0][2]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml:1:1: cannot read"):
        load_config(tmp_path / "missing.yaml")


def _example_leaves() -> list[object]:
    text = EXAMPLE.read_text()
    return [pytest.param(leaf, id=leaf.path) for leaf in leaves(text)]


@pytest.mark.parametrize("leaf", _example_leaves())
def test_every_example_leaf_mutated_to_wrong_type_is_located(leaf: object) -> None:
    from tests.support.configs import Leaf

    assert isinstance(leaf, Leaf)
    text = EXAMPLE.read_text()
    mutated = replace_span(text, leaf.start, leaf.end, wrong_type_literal(leaf.value))
    found = issues_of(mutated)
    assert any(ln == leaf.line and p == leaf.path for ln, p, _ in found), found


def test_secret_files_resolve_against_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "command-key").write_bytes(b"k3y\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret(Path("command-key"), base_dir=tmp_path) == b"k3y"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    (tmp_path / "command-key").write_bytes(b"local")
    assert read_secret(Path("command-key"), base_dir=tmp_path) == b"local"
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret(Path("absent"), base_dir=tmp_path)
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(Path("empty"), base_dir=tmp_path)


def test_redacted_dump_masks_url_userinfo_and_keeps_defaults() -> None:
    config = parse_config(BASE)
    dumped = redacted_dump(config)
    assert dumped["lanes"][0]["plc"]["timeout_s"] == 0.5
    assert dumped["mqtt"]["password_file"] == "mqtt-password"
    from gate_controller.config.secrets import _mask

    assert _mask({"url": "socket://user:pw@host:1"}) == {"url": "socket://***@host:1"}


def test_docs_embed_the_generated_reference() -> None:
    from gate_controller.config.reference import reference_markdown

    docs = (EXAMPLE.parents[1] / "docs" / "configuration.md").read_text()
    assert reference_markdown() in docs, "docs/configuration.md is stale: paste `smartgate config reference`"
