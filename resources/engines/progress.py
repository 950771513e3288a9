"""Progress of a batch in this process, for whoever watches it (the CLI's progress bar).

The assets report where a batch is; a listener registered with :func:`watching` sees every
report synchronously. With no listener a report costs a function call, so the assets report
freely. Dagster's own event log is not the channel: its per-event records are what the CLI
keeps off the terminal.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

Phase = Literal["validation", "loading", "running", "publishing"]


@dataclass(frozen=True)
class Progress:
    batch_id: str
    phase: Phase
    done: int = 0  # requests answered, earlier runs included
    total: int = 0  # valid requests of the batch
    requests_per_s: float = 0.0  # this run's rate so far
    output_tokens_per_s: float = 0.0


_listeners: list[Callable[[Progress], None]] = []


def report_progress(progress: Progress) -> None:
    for listener in _listeners:
        listener(progress)


@contextmanager
def watching(listener: Callable[[Progress], None]) -> Iterator[None]:
    """Call ``listener`` with every progress report made in this block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
