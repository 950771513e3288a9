"""The deployment's engine: which of the two resources, with which settings, decided once.

Settings come from, later ones winning:

1. the engine config file named by ``BATCH_ENGINE_CONFIG``: YAML whose keys are
   ``batch-infer run``'s engine flags, with or without the dashes (``max-model-len: 4096``,
   ``engine-url: [http://vllm:8000/v1]``), as ``vllm serve --config`` reads one;
2. the environment (:data:`ENV`: ``BATCH_MODEL``, ``BATCH_ENGINE_URLS``, ...);
3. the fields given here (``batch-infer run``'s flags).

With ``engine_urls`` set the engine is :class:`VLLMServerPool`, else :class:`VLLMEngine`. The
code location, the CLI and the API all build it here, so a bad file is an error when the code
location loads: an unknown key, a key of the other mode, or a bad value, each named.
"""

import os
import typing
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
import yaml
from pydantic.fields import FieldInfo

from resources.engines.base import DEFAULT_MODEL, BatchEngine
from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine

CONFIG_ENV = "BATCH_ENGINE_CONFIG"
# Fields a deployment sets from the environment. A list field's variable is comma-separated;
# a secret's is passed on as dg.EnvVar, so Dagster resolves it when the run starts and never
# shows or stores its value.
ENV = {
    "model": "BATCH_MODEL",
    "served_model_name": "BATCH_SERVED_MODEL_NAME",
    "engine_urls": "BATCH_ENGINE_URLS",
    "engine_api_key": "BATCH_ENGINE_API_KEY",
    "lora_modules": "BATCH_LORA_MODULES",
}
SECRETS = frozenset({"engine_api_key"})
ENGINES: tuple[type[BatchEngine], ...] = (VLLMEngine, VLLMServerPool)


class EngineConfigError(ValueError):
    """Engine settings that name no field, the other mode's field, or a bad value."""


def engine_fields() -> dict[str, FieldInfo]:
    """Every field of either engine, the shared ones once."""
    fields: dict[str, FieldInfo] = {}
    for engine in ENGINES:
        fields.update(engine.model_fields)
    return fields


def flag_of(name: str) -> str:
    """``--field-name``, or the flag the field names (``--engine-url`` for ``engine_urls``)."""
    field = engine_fields().get(name)
    extra = field.json_schema_extra if field is not None else None
    if isinstance(extra, dict) and isinstance(extra.get("flag"), str):
        return str(extra["flag"])
    return f"--{name.replace('_', '-')}"


def field_of_key(key: str, where: str) -> str:
    """The field a config key names (``max-model-len``, ``--engine-url``, ``seed``)."""
    flag = f"--{key.lstrip('-')}"
    for name in engine_fields():
        if flag in (flag_of(name), f"--{name.replace('_', '-')}", f"--{name}"):
            return name
    raise EngineConfigError(f"{where}: {key!r} is not an engine setting (see batch-infer run -h)")


def read_engine_config(path: str | Path) -> dict[str, Any]:
    """The fields an engine config file sets."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise EngineConfigError(f"{CONFIG_ENV}={path}: cannot be read: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EngineConfigError(f"{CONFIG_ENV}={path}: expected a mapping of settings")
    where = f"{CONFIG_ENV}={path}"
    return {field_of_key(str(key), where): value for key, value in data.items()}


def env_fields() -> dict[str, Any]:
    """The fields of :data:`ENV` that the environment sets."""
    found: dict[str, Any] = {}
    fields = engine_fields()
    for name, var in ENV.items():
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        if name in SECRETS:
            found[name] = dg.EnvVar(var)
        elif typing.get_origin(fields[name].annotation) is list:
            found[name] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            found[name] = value
    return found


def engine_from_env(**fields: Any) -> BatchEngine:
    """The engine of the config file, the environment and ``fields`` (in that order)."""
    path = os.environ.get(CONFIG_ENV, "").strip()
    from_file = read_engine_config(path) if path else {}
    settings = {"model": DEFAULT_MODEL, **from_file, **env_fields(), **fields}
    engine = VLLMServerPool if settings.get("engine_urls") else VLLMEngine
    if engine is VLLMEngine:
        settings.pop("engine_urls", None)
    foreign = sorted(set(settings) - set(engine.model_fields))
    if foreign:
        flags = ", ".join(flag_of(name) for name in foreign)
        if engine is VLLMServerPool:
            reason = (
                "settings of the in-process engine, but servers are given (engine_urls): "
                "the servers' own flags set their engine"
            )
        else:
            reason = "settings of the server pool, but no servers are given (engine_urls)"
        raise EngineConfigError(f"{flags}: {reason}")
    try:
        return engine(**settings)
    except pydantic.ValidationError as error:
        source = f" (from {CONFIG_ENV}={path})" if path else ""
        raise EngineConfigError(f"engine settings{source}: {error}") from error
