"""How fast a served model has run batches here, kept so that a batch not yet run has an ETA.

Each inference run that answered requests adds its counts and inference time (engine loading
not included) to ``work/throughput/<model>.json``, which keeps the last :data:`KEEP` runs. Two
runs ending at once may both rewrite it; one of their samples is then lost, which an estimate
can afford. A model with no runs has no ETA: nothing is invented.
"""

import time
from dataclasses import dataclass

import msgspec

from resources.layout import throughput_key
from resources.storage import BatchStorage

KEEP = 20


class RunRate(msgspec.Struct, frozen=True):
    batch_id: str
    finished_at: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float


class _Record(msgspec.Struct):
    model: str
    runs: list[RunRate]


@dataclass(frozen=True)
class Eta:
    """An ETA from the rates of earlier runs of the same model."""

    runs: int
    requests_per_s: float
    tokens_per_s: float  # prompt and completion tokens together
    by_requests_s: float  # the lines at the request rate of earlier runs
    at_most_s: float | None  # the prompt and the most output the lines allow, at the token rate


def record_run(
    storage: BatchStorage,
    model: str,
    batch_id: str,
    requests: int,
    prompt_tokens: int,
    completion_tokens: int,
    wall_s: float,
) -> None:
    """Keep the rate of one inference run that answered requests."""
    if requests <= 0 or wall_s <= 0:
        return
    runs = [r for r in read_runs(storage, model) if r.batch_id != batch_id][-(KEEP - 1) :]
    runs.append(
        RunRate(batch_id, int(time.time()), requests, prompt_tokens, completion_tokens, wall_s)
    )
    storage.write_bytes(throughput_key(model), msgspec.json.encode(_Record(model, runs)))


def read_runs(storage: BatchStorage, model: str) -> list[RunRate]:
    raw = storage.read_optional(throughput_key(model))
    if raw is None:
        return []
    try:
        return msgspec.json.decode(raw, type=_Record).runs
    except msgspec.DecodeError:  # a record another version wrote: start again
        return []


def estimate_eta(
    runs: list[RunRate], lines: int, prompt_tokens: int | None, max_output_tokens: int | None
) -> Eta | None:
    """The ETA of ``lines`` requests; None when the model has no run to go by."""
    wall = sum(r.wall_s for r in runs)
    if not runs or wall <= 0:
        return None
    requests_per_s = sum(r.requests for r in runs) / wall
    tokens_per_s = sum(r.prompt_tokens + r.completion_tokens for r in runs) / wall
    at_most = None
    if prompt_tokens is not None and max_output_tokens is not None and tokens_per_s > 0:
        at_most = (prompt_tokens + max_output_tokens) / tokens_per_s
    return Eta(len(runs), requests_per_s, tokens_per_s, lines / requests_per_s, at_most)
