"""Helpers to derive broken configs from the shipped example, located by YAML node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "smartgate.example.yaml"
DEMO = ROOT / "config" / "demo.yaml"


@dataclass(frozen=True)
class Leaf:
    path: str  # as the loader reports it: lanes[0].plc.port
    line: int  # 1-based
    start: int  # offset of the value in the text
    end: int
    value: object


def leaves(text: str) -> Iterator[Leaf]:
    """Every scalar value of a YAML document with its dotted path and source span."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert root is not None

    def walk(node: yaml.Node, path: str) -> Iterator[Leaf]:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                yield from walk(value, f"{path}.{key.value}" if path else str(key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield from walk(item, f"{path}[{i}]")
        else:
            value = yaml.safe_load(text[node.start_mark.index:node.end_mark.index] or "null")
            yield Leaf(path, node.start_mark.line + 1, node.start_mark.index, node.end_mark.index, value)

    yield from walk(root, "")


def wrong_type_literal(value: object) -> str:
    """A YAML literal of a different type than ``value`` that no field of that type accepts."""
    if isinstance(value, bool):
        return '"not-a-bool"'
    if isinstance(value, int | float):
        return '"not-a-number"'
    if isinstance(value, str):
        return "[1, 2]"
    return "{bogus: 1}"


def replace_span(text: str, start: int, end: int, new: str) -> str:
    if start == end:  # an empty scalar (implicit null): insert after the colon
        return text[:start] + " " + new + text[end:]
    return text[:start] + new + text[end:]
