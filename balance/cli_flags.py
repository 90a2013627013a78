"""CLI flags derived from the config models: one flag per field, named as the field.

``weight_decay`` is ``--weight-decay``; the field's description is the help and its
default is shown. A flag left out stays out of the config, so the model's own
default applies; :func:`build_models` builds the models from what was given.
"""

import functools
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from balance.config import RangeTestConfig, TrainConfig, format_validation_error

# TrainConfig fields only a training run uses; `lr-find` offers every other one (the range
# test augments when training would, and reports min_lr = max_lr / div_factor).
TRAIN_ONLY = (
    "policy",
    "max_lr",
    "epochs",
    "final_div_factor",
    "pct_start",
    "base_momentum",
    "max_momentum",
)
COMMON = tuple(name for name in TrainConfig.model_fields if name not in TRAIN_ONLY)

# A group of flags: a prefix for their help, the model they fill, the fields.
Group = tuple[str, type[BaseModel], tuple[str, ...]]
RUN: Group = ("", TrainConfig, COMMON)
SCHEDULE: Group = ("", TrainConfig, TRAIN_ONLY)
RANGE: Group = ("", RangeTestConfig, tuple(RangeTestConfig.model_fields))
RANGE_IF_NEEDED: Group = ("range test, only without --max-lr: ", *RANGE[1:])
# The range test's probes train the run these describe (its budget and schedule).
PROBED: Group = ("probes: ", TrainConfig, tuple(name for name in TRAIN_ONLY if name != "max_lr"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_type(annotation: Any) -> tuple[Any, str | None]:
    """The type the parser converts to, and a metavar listing the choices of a Literal."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = (arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        # Parsed as text and checked by pydantic, so a bad choice reads like any bad value.
        return str, "[" + "|".join(choices) + "]"
    return annotation, None


def _option(name: str, field: FieldInfo, prefix: str) -> inspect.Parameter:
    kind, metavar = _cli_type(field.annotation)
    flag = _flag(name)
    decls = [f"{flag}/--no-{flag.removeprefix('--')}"] if kind is bool else [flag]
    default = field.get_default()
    shown = "" if default is None else f" [default: {default}]"
    help_text = f"{prefix}{field.description or name.replace('_', ' ')}{shown}"
    option = typer.Option(*decls, help=help_text, metavar=metavar, show_default=False)
    # Every flag defaults to None, meaning "not given": the config's default then applies.
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def config_options(*groups: Group) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add one flag per config field to a command whose signature ends in ``**values``."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(func, include_extras=True)
        own = [
            param.replace(annotation=hints[param.name])
            for param in inspect.signature(func).parameters.values()
            if param.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        derived = [
            _option(name, model.model_fields[name], prefix)
            for prefix, model, names in groups
            for name in names
        ]
        params = derived + own
        if len({param.name for param in params}) != len(params):
            raise TypeError(f"{func.__name__}: two flags share a name")

        @functools.wraps(func)
        def command(**values: Any) -> None:
            func(**values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {param.name: param.annotation for param in params}
        return command

    return decorate


def build_models(values: dict[str, Any], *models: type[BaseModel]) -> tuple[list[Any], list[str]]:
    """Build each model from the flags given for it; the built models and every problem."""
    built, problems = [], []
    for model in models:
        given = {k: v for k, v in values.items() if k in model.model_fields and v is not None}
        try:
            built.append(model.model_validate(given))
        except ValidationError as error:
            problems += format_validation_error(error)
    return built, problems
