"""The engine protocol: what a run asks of an engine, whichever kind it is.

Two resources implement it: :class:`~resources.engines.vllm_engine.VLLMEngine` (vLLM in the
run's own process) and :class:`~resources.engines.pool.VLLMServerPool` (long-running vLLM
OpenAI servers). A run hands one of them the batch's pending requests, a journal and a
:class:`RunControl` (deadline, cancel poll, progress, priority) and gets :class:`LoopStats`
back; the engine also says which run tags and executor its runs need, so the jobs take both
from the same object the resources are built from, and a run can never carry the other
mode's tags.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dagster as dg
import msgspec
from pydantic import Field

from resources.journal import JournalRecord, JournalWriter
from resources.layout import ENGINE_POOL_TAG, GPU_TAG

DEFAULT_MODEL = "./models/tiny-chat"  # what `make model` generates (BATCH_MODEL unset)
_ENCODER = msgspec.json.Encoder()


def response_id(batch_id: str, line: int) -> str:
    """A stable id for a line's response, the same on every attempt."""
    return hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def dumps(value: Any) -> str:
    """Compact JSON (msgspec: several times faster than the json module on answer bodies)."""
    try:
        return _ENCODER.encode(value).decode("utf-8")
    except (TypeError, UnicodeEncodeError, msgspec.EncodeError):  # e.g. a lone surrogate
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ServedNames:
    """The names an engine answers to: its base model's (the first is reported) and its
    adapters'."""

    base: tuple[str, ...]
    adapters: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.base or name in self.adapters

    def not_found(self, name: str) -> str:
        """What ``vllm serve`` answers (404) to a request for a name it does not serve."""
        return f"The model `{name}` does not exist. Valid aliases: {', '.join(self.base)}."


@dataclass
class LoopStats:
    requests: int = 0  # lines answered (200 or 400) in this run
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    wall_s: float = 0.0
    stopped_at_deadline: bool = False  # stopped taking new requests; the rest waits
    cancelled: bool = False  # a cancel request stopped the loop; in-flight requests aborted

    def count(self, record: JournalRecord) -> None:
        """Count one journaled line: an answer (200) or an error line."""
        self.requests += 1
        self.rejected += record.status_code != 200
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.cached_tokens += record.cached_tokens

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


@dataclass
class RunControl:
    """What steers one run's loop from outside: when to stop, whether to cancel, who watches.

    Both loops call :meth:`start` once, then :meth:`deadline_passed`, :meth:`cancel_requested`
    and :meth:`tick` on every turn, and :meth:`finish` at the end.
    """

    deadline: float | None = None  # epoch seconds: stop taking new requests from then on
    cancel_check: Callable[[], bool] | None = None  # polled; True stops the loop at once
    on_progress: Callable[[LoopStats], None] | None = None
    progress_interval_s: float = 15.0
    cancel_poll_s: float = 2.0
    priority: int = 0  # vLLM's request priority (lower goes first), where the engine uses one
    _started: float = field(default=0.0, init=False)
    _reported: float = field(default=0.0, init=False)
    _polled: float = field(default=0.0, init=False)

    def start(self) -> None:
        self._started = self._reported = self._polled = time.monotonic()

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def cancel_requested(self) -> bool:
        """Whether a cancel arrived; asks ``cancel_check`` at most every ``cancel_poll_s``."""
        now = time.monotonic()
        if self.cancel_check is None or now - self._polled < self.cancel_poll_s:
            return False
        self._polled = now
        return self.cancel_check()

    def tick(self, stats: LoopStats) -> None:
        """Report ``stats`` to the listener, at most every ``progress_interval_s``."""
        now = time.monotonic()
        if self.on_progress is not None and now - self._reported >= self.progress_interval_s:
            stats.wall_s = now - self._started
            self.on_progress(stats)
            self._reported = now

    def finish(self, stats: LoopStats) -> LoopStats:
        stats.wall_s = time.monotonic() - self._started
        return stats


class BatchEngine(dg.ConfigurableResource):
    """The fields and the protocol every engine resource has.

    A line's ``body.model`` names one of :attr:`served_model_names` or an adapter.
    """

    model: str = Field(description="Local model folder or model name.")
    served_model_name: str | None = Field(
        default=None,
        description="Name a request's body.model must use; defaults to `model`, as in vllm serve.",
    )
    model_aliases: list[str] = Field(
        default_factory=list, description="Further names accepted in body.model."
    )

    # Where the engine runs: "in_process" or "pool".
    MODE: ClassVar[str] = ""
    # Whether a run loads the engine itself (and so reports a loading phase).
    LOADS_IN_RUN: ClassVar[bool] = False
    # Whether a batch's lines are grouped by model: one engine answers every line and swaps
    # adapters in and out of a few slots. A pool's servers of several models take their lines
    # at the same time, so there lines keep their order.
    GROUPS_LINES_BY_MODEL: ClassVar[bool] = False

    @property
    def served_model_names(self) -> list[str]:
        """Every name a request may use; the first is the one reported in responses."""
        primary = self.served_model_name or self.model
        return [primary, *(a for a in self.model_aliases if a != primary)]

    @property
    def model_names(self) -> "ServedNames | None":
        """The names a line's ``body.model`` may use, or None when only the run knows them (a
        pool's servers say what they serve, and answer any other name as vllm serve does)."""
        return None

    @property
    def tokenizer_folder(self) -> str:
        """Where the model's tokenizer is, for counting tokens before a run (a local folder or
        a hub name, which is not counted)."""
        return self.model

    @property
    def context_length(self) -> int | None:
        """The context length set for the engine (None: the model's own)."""
        return None

    def run_tags(self) -> dict[str, str]:
        """The tags of the runs that use this engine (the run queue limits them by these)."""
        raise NotImplementedError

    def executor(self) -> dg.ExecutorDefinition | None:
        """The executor of the jobs whose runs use this engine (None: Dagster's default)."""
        return None

    def check_run_tags(self, tags: Mapping[str, str]) -> None:
        """Fail a run whose tags are another engine's (a launchpad changed a locked field).

        A run's queue slot and its Kubernetes pod follow from its tags, which come from the
        deployment's engine; an engine that needs other tags would run where it does not fit.
        """
        own = self.run_tags()
        other = {GPU_TAG, ENGINE_POOL_TAG} - set(own)
        wrong = sorted(k for k in other if k in tags)
        wrong += sorted(k for k, v in own.items() if k in tags and tags[k] != v)
        if wrong:
            raise dg.Failure(
                f"this run carries the tags of another engine ({', '.join(wrong)}), but its "
                f"engine is {self.MODE} ({type(self).__name__}): the engine mode, the servers' "
                "use and tensor_parallel_size are the deployment's (BATCH_ENGINE_URLS, "
                "BATCH_ENGINE_CONFIG); a launchpad may not change them",
                allow_retries=False,
            )

    def run_pending(
        self,
        batch_id: str,
        endpoint: str,
        pending: Iterable[tuple[int, str]],
        journal: JournalWriter,
        control: RunControl,
    ) -> tuple[LoopStats, float]:
        """Answer every ``(line, body_json)`` of ``pending`` into ``journal``.

        Returns the loop's stats and the seconds spent loading an engine (0 for a pool).
        """
        raise NotImplementedError
