"""Command-line flags for the engine, generated from the fields of the two engine resources.

The resources' fields (:class:`VLLMEngine`'s and :class:`VLLMServerPool`'s) are the one list
of engine settings (the engine config file's keys are these flags too): each becomes
``--field-name`` with the field's type, its description as help and its default named there.
A flag left out keeps the resource's own default (several defaults depend on the platform,
which is known only when the engine loads), so only the flags given reach the resource.
:func:`engine_flags` is the inverse, for programs that start ``batch-infer run`` (the
benchmarks).
"""

import argparse
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from resources.engines.base import DEFAULT_MODEL, BatchEngine
from resources.engines.config import ENV, engine_from_env, flag_of
from resources.engines.config import engine_fields as all_engine_fields

__all__ = ["add_engine_arguments", "engine_flags", "engine_from_args", "flag_of"]

# Settings of this process, not of a one-shot run's engine.
NOT_FLAGS = frozenset({"keep_loaded"})


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None``; the annotation itself otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def _default_text(name: str, field: FieldInfo) -> str:
    default = DEFAULT_MODEL if name == "model" else field.default
    if default is PydanticUndefined or default is None or default == []:
        shown = ""
    elif isinstance(default, bool):
        shown = f"default: {'on' if default else 'off'}"
    else:
        shown = f"default: {default}"
    env = ENV.get(name)
    said = "; ".join(part for part in (f"env {env}" if env else "", shown) if part)
    return f" ({said})" if said else ""


def engine_fields() -> dict[str, FieldInfo]:
    return {n: f for n, f in all_engine_fields().items() if n not in NOT_FLAGS}


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (fields of the engine resource)")
    for name, field in engine_fields().items():
        kind = _value_type(field.annotation)
        help_text = (field.description or "") + _default_text(name, field)
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            group.add_argument(
                flag_of(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            group.add_argument(  # repeatable, and each takes one or more values
                flag_of(name),
                dest=name,
                action="extend",
                nargs="+",
                type=item,
                default=None,
                metavar=str(extra.get("metavar", "NAME")),
                help=help_text,
            )
        else:
            group.add_argument(flag_of(name), dest=name, type=kind, default=None, help=help_text)


def engine_from_args(args: argparse.Namespace) -> BatchEngine:
    """The engine of the flags given; the others keep the resource's defaults.

    The flags win over the engine config file and the environment (as in the code location).
    """
    given = {name: getattr(args, name) for name in engine_fields()}
    return engine_from_env(**{k: v for k, v in given.items() if v is not None})


def engine_flags(fields: dict[str, Any]) -> list[str]:
    """The ``batch-infer run`` flags that give an engine these field values."""
    known = engine_fields()
    flags: list[str] = []
    for name, value in fields.items():
        if name not in known:
            raise ValueError(f"{name!r} is not a field of the engine resource")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag_of(name) if value else f"--no-{flag_of(name)[2:]}")
        elif isinstance(value, list):
            flags += [flag_of(name), *map(str, value)] if value else []
        else:
            flags += [flag_of(name), str(value)]
    return flags
