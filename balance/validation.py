"""User errors in one line each: :class:`ConfigError` and pydantic's errors turned into it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from balance.search_space import AXIS_TAGS, StrictModel


class ConfigError(ValueError):
    """A user error found after parsing (missing files, sizes that do not fit).

    The message is one line naming the field, the rule and the value; when several
    problems were found at once, :attr:`problems` lists them one by one.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``field: message (got value)``."""
    lines = []
    for item in error.errors():
        loc = ""
        for part in item["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part not in AXIS_TAGS:
                loc += f".{part}" if loc else str(part)
        field = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "config")
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        # A missing field's input is the enclosing mapping; an explicit None is shown.
        shown = "" if isinstance(got, dict | BaseModel) else f" (got {got!r})"
        lines.append(f"{field}: {message}{shown}")
    return lines


def build(model: type[StrictModel], values: dict[str, Any]) -> Any:
    """Validate ``values`` into ``model``, raising :class:`ConfigError` with every problem."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = format_validation_error(error)
        raise ConfigError("; ".join(problems), problems) from None
