"""The contract as a document: AsyncAPI file, shipped JSON Schemas, and their examples agree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gate_controller.decision.signing import canonical_json, verify
from gate_controller.hub.hub_side import SCHEMA_NAMES, contract_errors, contract_schema, make_command, make_notice
from tests.support.hub import COMMAND_KEY, ROOT, transaction_record

REPO = Path(__file__).resolve().parents[3]
ASYNCAPI = REPO / "docs" / "mqtt" / "asyncapi.yaml"
GUIDE = REPO / "docs" / "mqtt-contract.md"


def asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return doc


def test_every_shipped_schema_is_valid_draft7() -> None:
    for name in SCHEMA_NAMES:
        jsonschema.Draft7Validator.check_schema(contract_schema(name))


def test_asyncapi_embeds_exactly_the_shipped_schemas() -> None:
    doc = asyncapi()
    assert doc["asyncapi"].startswith("3.")
    assert doc["components"]["schemas"] == {name: contract_schema(name) for name in SCHEMA_NAMES}


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_asyncapi_references_resolve_and_cover_every_topic() -> None:
    doc = asyncapi()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in doc.items() if k != "components"} | {"components": {
        k: v for k, v in doc["components"].items() if k != "schemas"}})
    assert refs
    for ref in refs:
        assert ref.startswith("#/")
        _resolve(doc, ref)
    addresses = {c["address"] for c in doc["channels"].values()}
    for suffix in ("status", "transactions", "events", "telemetry", "reply", "scans/{scan_id}/preview",
                   "scans/{scan_id}/image"):
        assert f"smartgate/v1/{{site}}/{{gate}}/{suffix}" in addresses
    assert "smartgate/v1/{site}/release/{container_number}" in addresses
    for name in ("barrier", "lane.mode", "rebirth", "scan.fetch", "inspection.result", "config.reload"):
        assert f"smartgate/v1/{{site}}/{{gate}}/cmd/{name}" in addresses
    for operation in doc["operations"].values():
        assert operation["action"] in ("send", "receive")
        qos = operation["bindings"]["mqtt"]["qos"]
        channel = _resolve(doc, operation["channel"]["$ref"])
        assert qos == (0 if channel["address"].endswith("/telemetry") else 1)


def test_schemas_accept_real_messages_and_refuse_broken_ones() -> None:
    tx = {"schema": "smartgate.transaction/1", **transaction_record(1), "msg_id": "01J9Z8Y7X6W5V4T3S2R1Q0P9N8",
          "seq": 1, "boot_id": 1, "historical": False}
    assert contract_errors(f"{ROOT}/transactions", json.dumps(tx).encode()) == []
    broken = {**tx, "decision": {**tx["decision"], "action": "maybe"}}
    assert contract_errors(f"{ROOT}/transactions", json.dumps(broken).encode())
    missing = {k: v for k, v in tx.items() if k != "seq"}
    assert contract_errors(f"{ROOT}/transactions", json.dumps(missing).encode())
    bad_ts = {**tx, "arrived_at": "2026-11-22 04:00:00"}
    assert contract_errors(f"{ROOT}/transactions", json.dumps(bad_ts).encode())
    notice = make_notice("MSKU1234565", "released", key=COMMAND_KEY, declared="general", ref="R-1")
    assert contract_errors("smartgate/v1/PORTA/release/MSKU1234565", json.dumps(notice).encode()) == []
    command = make_command("rebirth", {}, key=COMMAND_KEY)
    assert contract_errors(f"{ROOT}/cmd/rebirth", json.dumps(command).encode()) == []
    assert contract_errors(f"{ROOT}/scans/S1/preview", b"\xff\xd8\xff\xe0") == []
    assert contract_errors(f"{ROOT}/scans/S1/preview", b"GIF89a") == ["preview is not a JPEG"]


def _json_blocks(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every ```json block in the guide, with the nearest heading above it."""
    blocks = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if lines[i].strip() == "```json":
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((heading, "\n".join(body)))
        i += 1
    return blocks


def _topic_of_example(doc: dict[str, Any]) -> tuple[str, str]:
    if "schema" in doc:
        return "transaction", f"{ROOT}/transactions"
    if "state" in doc:
        return "status", f"{ROOT}/status"
    if "code" in doc:
        return "event", f"{ROOT}/events"
    if "uptime_s" in doc:
        return "telemetry", f"{ROOT}/telemetry"
    if "ok" in doc:
        return "reply", f"{ROOT}/reply"
    if "container" in doc:
        return "notice", f"smartgate/v1/PORTA/release/{doc['container']}"
    return "command", f"{ROOT}/cmd/lane.mode"


def test_examples_in_the_guide_are_valid() -> None:
    """Every JSON example of docs/mqtt-contract.md conforms to the schema of its topic."""
    kinds = []
    for heading, body in _json_blocks(GUIDE.read_text(encoding="utf-8")):
        doc = json.loads(body)
        kind, topic = _topic_of_example(doc)
        problems = contract_errors(topic, body.encode())
        assert problems == [], f"{kind} example under '{heading}': {problems}"
        if kind in ("notice", "command"):
            assert verify(doc, b"example-site-key"), f"{kind} example under '{heading}' is not signed right"
        kinds.append(kind)
    assert set(kinds) == {"transaction", "status", "event", "telemetry", "reply", "notice", "command"}
    assert kinds.count("status") == 3  # birth, Will, shutdown


def test_signature_example_in_the_guide_matches() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"canonical JSON:\n\n```\n(.+?)\n```", text, re.S)
    assert match, "the guide shows the canonical JSON of its command example"
    docs = [json.loads(b) for _, b in _json_blocks(text)]
    command = next(d for d in docs if _topic_of_example(d)[0] == "command")
    unsigned = {k: v for k, v in command.items() if k != "sig"}
    assert canonical_json(unsigned).decode() == match.group(1)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_package_data(name: str) -> None:
    path = REPO / "gate_controller" / "hub" / "schemas" / f"{name}.json"
    assert json.loads(path.read_text()) == contract_schema(name)
