"""What every section of the site file shares: strict frozen models, names, and located errors."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# Paths come from YAML strings; strict mode would refuse the str -> Path conversion.
FilePath = Annotated[Path, Field(strict=False)]
Seconds = Annotated[float, Field(gt=0)]


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """A hint for a misspelt key or name, or nothing when no option is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


def reject(problems: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
    """Fail cross-field validation, keeping where in the section each problem is.

    The locations travel in the error context so that `parse_config` can point at the exact
    YAML line of each offending key instead of the section as a whole.
    """
    if problems:
        summary = "; ".join(message for _, message in problems)
        raise PydanticCustomError("located", "{summary}", {"summary": summary, "problems": list(problems)})
