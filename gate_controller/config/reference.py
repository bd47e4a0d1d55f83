"""The configuration reference as Markdown, generated from the schema itself.

docs/configuration.md embeds this output between markers and a test keeps the two identical, so
the reference a technician reads can never drift from what the daemon accepts.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gate_controller.config import GateConfig, PointConfig, PointMap

__all__ = ["reference_markdown"]

BEGIN = "<!-- BEGIN GENERATED REFERENCE (smartgate config reference) -->"
END = "<!-- END GENERATED REFERENCE -->"


def reference_markdown() -> str:
    lines = [BEGIN, "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for path, field in _walk(GateConfig, ""):
        lines.append(
            f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {_bounds(field)} "
            f"| {(field.description or '').replace(chr(10), ' ').replace('|', '/')} |"
        )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    if model is PointMap:
        # Every point has the same three keys: describe them once, then list the points.
        for name, field in PointConfig.model_fields.items():
            yield f"{prefix}.<signal>.{name}", field
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        inner = _model_in(field.annotation)
        if inner is not None and inner is not PointConfig:
            is_list = _is_list(field.annotation)
            yield path + ("[]" if is_list else ""), field
            yield from _walk(inner, path + ("[]" if is_list else ""))
        else:
            yield path, field


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    return get_origin(_unwrap(annotation)) is list


def _type_name(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map {_type_name(key)} → {_type_name(value)}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "PosixPath": "path", "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]  # factories here take no arguments
        table, address = getattr(made, "table", None), getattr(made, "address", None)
        if table is not None:
            return f"`{table} {address}`"
        return "(section defaults)" if _model_in(field.annotation) else "…"
    value = field.default
    if value is PydanticUndefined:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    parts: list[str] = []
    stack: list[Any] = [*field.metadata]
    annotation = field.annotation
    seen = 0
    while seen < 10:
        seen += 1
        if get_origin(annotation) is Annotated:
            args = get_args(annotation)
            stack.extend(m.metadata if isinstance(m, FieldInfo) else [m] for m in args[1:])
            annotation = args[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        else:
            break
    flat: list[Any] = []
    for item in stack:
        flat.extend(item if isinstance(item, list) else [item])
    for meta in flat:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"`{pattern}`")
        for attr, word in (("min_length", "min length"), ("max_length", "max length")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value}")
    return ", ".join(parts)
