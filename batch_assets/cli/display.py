"""What ``batch-infer`` shows a person: a progress bar, a short summary, and the logs kept aside.

:class:`ProgressDisplay` draws a live bar on a terminal and writes plain periodic lines
elsewhere (a CI log, a pipe). :func:`logs_to_file` sends everything the run prints (Dagster's
per-event records, vLLM's start-up logs, an engine process's output) to a log file, at the
file-descriptor level so that child processes and C extensions follow; warnings and errors
from Python's loggers still reach the terminal.
"""

import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from batch_assets.lifecycle.batches import BatchRecord, LiveCounts
from batch_assets.lifecycle.events import EventRecord
from resources.engines.progress import Progress

BAR_WIDTH = 24
TTY_REFRESH_S = 0.2
PLAIN_INTERVAL_S = 10.0
PHASE_TEXT = {
    "validation": "validating the input file",
    "loading": "loading the engine",
    "running": "running",
    "publishing": "writing the result files",
}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"


class ProgressDisplay:
    """Renders :class:`Progress` reports on ``stream``."""

    def __init__(self, stream: IO[str], batch_id: str, tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.last = Progress(batch_id, "validation")
        self._drawn_at = 0.0
        self._line_open = False
        self._write_phase(self.last)

    def update(self, progress: Progress) -> None:
        previous, self.last = self.last, progress
        if progress.phase != previous.phase and progress.phase != "running":
            self._write_phase(progress)
            return
        if progress.phase != "running":
            return
        now = time.monotonic()
        interval = TTY_REFRESH_S if self.tty else PLAIN_INTERVAL_S
        if now - self._drawn_at < interval and progress.done < progress.total:
            return
        self._drawn_at = now
        if self.tty:
            self.stream.write(f"\r{self.bar(progress)}\x1b[K")
            self._line_open = True
        else:
            self.stream.write(f"progress: {self.bar(progress)}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.flush()

    def _write_phase(self, progress: Progress) -> None:
        self.close()
        self.stream.write(f"{PHASE_TEXT[progress.phase]} ...\n")
        self.stream.flush()

    @staticmethod
    def bar(progress: Progress) -> str:
        total = max(progress.total, 1)
        share = min(progress.done / total, 1.0)
        filled = round(share * BAR_WIDTH)
        left = progress.total - progress.done
        eta = left / progress.requests_per_s if progress.requests_per_s > 0 else None
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress.done}/{progress.total} "
            f"{share:.0%}  {_rate(progress.requests_per_s)} req/s  "
            f"{_rate(progress.output_tokens_per_s)} tok/s  "
            f"ETA {_duration(eta) if eta is not None else '?'}"
        )


class _TerminalHandler(logging.Handler):
    """Warnings and errors of Python's loggers, on the terminal while the logs go to a file."""

    def __init__(self, stream: IO[str]):
        super().__init__(logging.WARNING)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def logs_to_file(path: Path) -> Iterator[IO[str]]:
    """Send this process's output to ``path``; yields a stream that still reaches the terminal.

    File descriptors 1 and 2 are pointed at the file (so vLLM's handlers, Dagster's console
    logger, tqdm bars, Python's warnings and any engine process all land there), and Python's
    ``sys.stdout`` and ``sys.stderr`` with them. Records of Python's loggers at WARNING and
    above are also written to the stream yielded: the terminal's standard error as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("a", encoding="utf-8", buffering=1)
    log.write(f"--- batch-infer {dt.datetime.now().isoformat(timespec='seconds')} ---\n")
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    fds = [fd for fd in (_fileno(sys.__stdout__), _fileno(sys.__stderr__)) if fd is not None]
    err_fd = _fileno(sys.stderr)
    terminal: IO[str] = (
        os.fdopen(os.dup(err_fd), "w", encoding="utf-8", buffering=1)
        if err_fd is not None
        else sys.stderr
    )
    saved_fds = {fd: os.dup(fd) for fd in fds}
    for fd in fds:
        os.dup2(log.fileno(), fd)
    sys.stdout = sys.stderr = log
    handler = _TerminalHandler(terminal)
    watched = [logging.getLogger()]  # vLLM's own loggers do not propagate: they stay in the file
    for logger in watched:
        logger.addHandler(handler)
    try:
        yield terminal
    finally:
        for logger in watched:
            logger.removeHandler(handler)
        log.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        log.close()
        if terminal is not saved_streams[1]:
            terminal.close()


def summary_lines(batch: BatchRecord, urls: dict[str, str], elapsed_s: float | None) -> list[str]:
    """The summary of one batch: ``name: value`` lines, the paths last."""
    counts = batch.request_counts
    lines = [
        f"batch_id: {batch.id}",
        f"status: {batch.status}",
        f"request_counts: total {counts.total}, completed {counts.completed}, "
        f"failed {counts.failed}",
    ]
    if usage := batch.usage:
        lines.append(
            f"usage: {usage.input_tokens} input tokens "
            f"({usage.input_tokens_details.cached_tokens} cached), "
            f"{usage.output_tokens} output tokens, {usage.total_tokens} total"
        )
    if elapsed_s is not None:
        lines.append(f"elapsed: {elapsed_s:.1f} s")
    lines += [f"{name}: {url}" for name, url in urls.items()]
    return lines


def timestamp_lines(batch: BatchRecord) -> list[str]:
    """``name_at: <local time>`` for every timestamp the batch has reached."""
    lines = []
    for name, value in batch.as_dict().items():
        if name.endswith("_at") and isinstance(value, int | float):
            when = dt.datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
            lines.append(f"{name}: {when}")
    return lines


def live_lines(live: LiveCounts) -> list[str]:
    """The rate and ETA of a batch's run in progress, and how fresh its counts are."""
    age = max(0.0, time.time() - live.updated_at)
    eta = "unknown (no rate yet)" if live.eta_s is None else _duration(live.eta_s)
    return [
        f"rate: {live.requests_per_s:.1f} req/s in the current run (counts {age:.0f} s old)",
        f"eta: {eta}",
    ]


def event_lines(record: EventRecord) -> list[str]:
    """The batch's webhook event and how its delivery went."""
    event, delivery = record.event, record.delivery
    line = f"webhook: {event.type} {event.id}: {delivery.state}, {delivery.attempts} attempts"
    if delivery.delivered_at:
        when = dt.datetime.fromtimestamp(delivery.delivered_at).astimezone()
        line += f", delivered at {when.isoformat(timespec='seconds')}"
    if delivery.last_error:
        line += f", last error: {delivery.last_error}"
    return [line]


def error_lines(batch: BatchRecord) -> list[str]:
    lines = []
    for error in batch.errors.data if batch.errors else []:
        where = f" (line {error.line})" if error.line else ""
        lines.append(f"error: {error.code}: {error.message}{where}")
    return lines


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
