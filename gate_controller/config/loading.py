"""Loading a site file: YAML with the position of every node, validation against the schema, and
every problem reported at once as ``file:line:column: field.path: what was expected``, so that a
technician can fix a site file without reading Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gate_controller.config.schema import GateConfig
from gate_controller.config.sections import did_you_mean
from gate_controller.core.errors import ConfigError, ConfigIssue

__all__ = ["load_config", "parse_config"]


Loc = tuple[str | int, ...]


class _Positions:
    """Line/column of every YAML node, keyed by its path in the loaded document."""

    def __init__(self) -> None:
        self.values: dict[Loc, tuple[int, int]] = {}
        self.keys: dict[Loc, tuple[int, int]] = {}

    def value(self, loc: Loc) -> tuple[int, int]:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.values:
                return self.values[loc[:n]]
        return (1, 1)

    def key(self, loc: Loc) -> tuple[int, int]:
        return self.keys.get(loc) or self.value(loc)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, column: int) -> None:
        super().__init__(key)
        self.key, self.line, self.column = key, line, column


def _construct(node: yaml.Node, loc: Loc, pos: _Positions, loader: yaml.SafeLoader) -> Any:
    pos.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key)
            if key in out:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            pos.keys[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, (*loc, key), pos, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*loc, i), pos, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for hints and bounds)."""
    model: type[BaseModel] | None = GateConfig
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_of(field.annotation)
    return model


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    if get_origin(annotation) is Annotated:
        return _model_of(get_args(annotation)[0])
    return None


def _bounds(loc: Loc) -> tuple[Any, Any]:
    model = _model_at(loc)
    if model is None or not loc or not isinstance(loc[-1], str):
        return (None, None)
    field: FieldInfo | None = model.model_fields.get(loc[-1])
    if field is None:
        return (None, None)
    low = high = None
    for meta in _iter_metadata(field):
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        low = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
        high = getattr(meta, "lt", None) if getattr(meta, "lt", None) is not None else high
    return (low, high)


def _iter_metadata(field: FieldInfo) -> Iterator[Any]:
    yield from field.metadata
    stack = [field.annotation]
    while stack:
        ann = stack.pop()
        if get_origin(ann) is Annotated:
            args = get_args(ann)
            for meta in args[1:]:
                if isinstance(meta, FieldInfo):
                    yield from meta.metadata
                else:
                    yield meta
            stack.append(args[0])
        else:
            stack.extend(a for a in get_args(ann) if a is not type(None))


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "path_type": "a path string",
    "list_type": "a list",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
}

_SECRET_WORDS = ("password", "secret", "key", "token")


def _describe(error: Mapping[str, Any]) -> str:
    kind = str(error["type"])
    loc: Loc = tuple(error["loc"])
    got = error.get("input")
    ctx = error.get("ctx") or {}
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]} (got {_show(got)})"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        low, high = _bounds(loc)
        if low is not None and high is not None:
            return f"must be between {low} and {high} (got {_show(got)})"
        word = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {word} {bound} (got {_show(got)})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')} (got {_show(got)})"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        name = str(loc[-1])
        model = _model_at(loc)
        hint = did_you_mean(name, list(model.model_fields)) if model else ""
        if not hint and any(word in name.lower() for word in _SECRET_WORDS):
            hint = "; secrets are never inline: name a file with the *_file key"
        return f"unknown key {name!r}{hint}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')} (got {_show(got)})"
    if kind in {"string_too_short", "too_short"}:
        return f"is too short ({error['msg'].lower()})"
    if kind in {"string_too_long", "too_long"}:
        return f"is too long ({error['msg'].lower()})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_config(text: str, *, source: str = "<config>") -> GateConfig:
    """Validate YAML text; raise `ConfigError` carrying every `ConfigIssue` found."""
    loader = yaml.SafeLoader(text)
    positions = _Positions()
    try:
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        if node is None:
            raise ConfigError.from_issues([ConfigIssue(source, 1, 1, "", "the file is empty")])
        data = _construct(node, (), positions, yaml.SafeLoader(""))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError.from_issues([ConfigIssue(source, line, col, "", f"YAML syntax: {what}")]) from err
    except yaml.YAMLError as err:
        raise ConfigError.from_issues([ConfigIssue(source, 1, 1, "", f"YAML syntax: {err}")]) from err
    except _DuplicateKey as err:
        raise ConfigError.from_issues(
            [ConfigIssue(source, err.line, err.column, err.key, "key appears twice in the same mapping")]
        ) from err
    if not isinstance(data, dict):
        raise ConfigError.from_issues([ConfigIssue(source, 1, 1, "", "the top level must be a mapping of keys")])
    try:
        return GateConfig.model_validate(data)
    except ValidationError as err:
        issues = []
        for error in _expand_located(err.errors(include_url=False)):
            loc = _strip_union_tags(tuple(error["loc"]))
            line, col = positions.key(loc) if error["type"] == "extra_forbidden" else positions.value(loc)
            issues.append(ConfigIssue(source, line, col, _format_loc(loc), _describe({**error, "loc": loc})))
        issues.sort(key=lambda i: (i.line, i.column, i.path))
        raise ConfigError.from_issues(_dedupe(issues)) from err


def _expand_located(errors: Sequence[Any]) -> Iterator[Mapping[str, Any]]:
    for error in errors:
        ctx = error.get("ctx") or {}
        if error["type"] == "located" and "problems" in ctx:
            for sub_loc, message in ctx["problems"]:
                yield {"type": "value_error", "loc": (*error["loc"], *sub_loc), "msg": message,
                       "ctx": {"error": message}, "input": None}
        else:
            yield error


def _strip_union_tags(loc: Loc) -> Loc:
    # pydantic adds union member tags (e.g. 'constrained-str', 'function-after[...]') to locations.
    return tuple(
        p for p in loc if isinstance(p, int) or not ((re.match(r"^[a-z-]+(\[.*\])?$", p) and "-" in p) or "[" in p)
    )


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[str] = set()
    out = []
    for issue in issues:
        if str(issue) not in seen:
            seen.add(str(issue))
            out.append(issue)
    return out


def load_config(path: str | Path) -> GateConfig:
    """Load and validate a config file; a `ConfigError` lists every problem with file:line:column."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError.from_issues([ConfigIssue(str(source), 1, 1, "", f"cannot read: {reason}")]) from err
    return parse_config(text, source=str(source))


