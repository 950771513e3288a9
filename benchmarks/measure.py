"""One measurement record, the sides' names, and JSON-lines output."""

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

# side id -> (label in tables, what the time covers)
SIDES: dict[str, tuple[str, str]] = {
    "raw": ("(1) raw vLLM `LLM.chat` / `LLM.embed`, requests in memory", "phase, in memory"),
    "raw_grouped": (
        "(1') raw `LLM.chat`, requests grouped by system prompt (reference)",
        "phase, in memory",
    ),
    "phase": (
        "(2) this project: inference phase (shards -> engine -> journal)",
        "phase, in memory",
    ),
    "phase_unordered": ("(2') inference phase, prefix ordering off", "phase, in memory"),
    "e2e": ("(3) this project: `batch-infer run` (subprocess)", "whole process"),
    "e2e_asset": (
        "(3) the `batch_inference` asset of that run (its Dagster metadata)",
        "phase, from the run",
    ),
    "run_batch": ("(4) vLLM `run_batch`, engine in its own process (default)", "whole process"),
    "run_batch_bar": ("(4) `run_batch` batch phase (its progress bar, 1 s grain)", "phase, ~1 s"),
    "run_batch_inproc": (
        "(4b) vLLM `run_batch`, `VLLM_ENABLE_V1_MULTIPROCESSING=0`",
        "whole process",
    ),
    "run_batch_inproc_bar": ("(4b) its batch phase (progress bar, 1 s grain)", "phase, ~1 s"),
    "naive": ("(5) naive loop: one request at a time to vLLM's API server", "loop only, sample"),
}
# Sides a user selects with --sides, and the ids each one produces.
SIDE_GROUPS: dict[str, tuple[str, ...]] = {
    "raw": ("raw", "raw_grouped"),
    "phase": ("phase", "phase_unordered"),
    "e2e": ("e2e", "e2e_asset"),
    "run_batch": ("run_batch", "run_batch_bar", "run_batch_inproc", "run_batch_inproc_bar"),
    "naive": ("naive",),
}


@dataclass
class Measurement:
    """A timed run (``kind="run"``) or a side's median over runs (``kind="summary"``)."""

    workload: str
    side: str
    requests: int
    seconds: float
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    kind: str = "summary"
    runs: int = 1
    attempt: int | None = None
    ratio_to_raw: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    @property
    def label(self) -> str:
        return SIDES.get(self.side, (self.side, ""))[0]

    @property
    def scope(self) -> str:
        return SIDES.get(self.side, ("", "?"))[1]

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            label=self.label,
            scope=self.scope,
            seconds=round(self.seconds, 3),
            requests_per_s=round(self.requests_per_s, 2),
            output_tokens_per_s=round(self.output_tokens_per_s, 1),
        )
        if self.ratio_to_raw is not None:
            data["ratio_to_raw"] = round(self.ratio_to_raw, 3)
        return data


def emit(record: dict[str, Any], stream: TextIO = sys.stdout) -> None:
    """One JSON line on stdout (the suite's machine-readable output)."""
    stream.write(json.dumps(record, default=str) + "\n")
    stream.flush()


def log(message: str) -> None:
    """Progress for people, on stderr, so stdout stays JSON lines."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()
