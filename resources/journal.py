"""The journal: finished requests, written as they complete, so a crash loses only in-flight work.

Each run attempt writes its own segment and never touches an older one, so a segment torn by
a kill is only torn at its end; readers skip a torn last line. One record a line:
``line  status_code  prompt_tokens  completion_tokens  cached_tokens  reasoning_tokens  body``,
tab-separated; ``body`` is compact JSON, which never contains a raw tab or newline. Records
of the previous release, without ``reasoning_tokens``, still read (as 0).

In a local folder, records reach the operating system after every engine step (a killed
process loses nothing written) and the disk at least every second. On S3, where an object
cannot be appended to, the records of each interval go up as one more part object
(``<attempt>-<part>.tsv``), so a lost worker loses at most one interval of finished requests.
"""

import os
import shutil
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from resources.layout import JOURNAL_SEGMENT_SUFFIX, journal_segment
from resources.storage import BatchStorage

# A lone surrogate cannot be UTF-8: it is written as its JSON escape, which keeps the body valid.
_ERRORS = "backslashreplace"


@dataclass(frozen=True)
class JournalRecord:
    line: int
    status_code: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    body: str
    reasoning_tokens: int = 0  # of completion_tokens: the thinking of a reasoning model

    @classmethod
    def error(cls, line: int, status_code: int, body_json: str) -> "JournalRecord":
        """The record of an error answer (4xx, 5xx): no tokens."""
        return cls(line, status_code, 0, 0, 0, body_json)

    @classmethod
    def answer(cls, line: int, body: dict[str, Any], body_json: str) -> "JournalRecord":
        """The 200 record of an OpenAI answer body: its token counts read from its usage
        (chat and completions: prompt/completion tokens; Responses: input/output tokens)."""
        usage = body.get("usage") or {}
        prompt = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
        completion = usage.get("completion_tokens", usage.get("output_tokens")) or 0
        inputs = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        outputs = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        return cls(
            line,
            200,
            int(prompt),
            int(completion),
            int(inputs.get("cached_tokens") or 0),
            body_json,
            int(outputs.get("reasoning_tokens") or 0),
        )

    def encode(self) -> str:
        return (
            f"{self.line}\t{self.status_code}\t{self.prompt_tokens}\t"
            f"{self.completion_tokens}\t{self.cached_tokens}\t{self.reasoning_tokens}\t"
            f"{self.body}\n"
        )


class JournalWriter:
    """Append records for one attempt under ``prefix`` (a folder key)."""

    def __init__(
        self, storage: BatchStorage, prefix: str, attempt: str, sync_interval_s: float | None = None
    ):
        self.storage, self.prefix, self.attempt = storage, prefix, attempt
        self.written = 0
        self._parts = 0
        self._pending = 0
        local = storage.local_path(journal_segment(prefix, attempt))
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = local.open("a", encoding="utf-8", errors=_ERRORS)
            self._interval = 1.0 if sync_interval_s is None else sync_interval_s
        else:
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                "w+", encoding="utf-8", errors=_ERRORS, prefix="journal-"
            )
            self._interval = 5.0 if sync_interval_s is None else sync_interval_s
        self._local = local is not None
        self._last_sync = time.monotonic()

    def write(self, record: JournalRecord) -> None:
        self._file.write(record.encode())
        self.written += 1
        self._pending += 1

    def flush(self, force: bool = False) -> None:
        """Hand records to the OS; make them durable once per interval (or when forced)."""
        self._file.flush()
        if not force and time.monotonic() - self._last_sync < self._interval:
            return
        if self._local:
            os.fsync(self._file.fileno())
        elif self._pending:
            self._file.seek(0)
            data = self._file.read().encode("utf-8")
            key = journal_segment(self.prefix, self.attempt, self._parts)
            self.storage.write_bytes(key, data)
            self._parts += 1
            self._file.seek(0)
            self._file.truncate()
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.flush(force=True)
            self._file.close()

    def __enter__(self) -> "JournalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JournalIndex:
    """Every complete record of a batch's journal, indexed by line; bodies stay on disk.

    The index costs ~20 bytes a record, so a million finished requests fit in ~20 MB however
    long their answers; :meth:`records` loads the bodies of one range of lines at a time. On
    S3 the segments are first copied to a local temporary folder. Segments are read in name
    order (attempt order), and the first record of a line wins.
    """

    def __init__(self, storage: BatchStorage, prefix: str):
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._files: list[Path] = []
        for info in storage.list(prefix):
            if info.key.endswith(JOURNAL_SEGMENT_SUFFIX):
                self._files.append(self._local_copy(storage, info.key))
        # Typed arrays, not lists of Python ints: ~60 bytes a record while reading, not ~350.
        lines, segments, offsets, lengths = (array("q") for _ in range(4))
        tokens, failed = array("q"), array("b")
        for segment, path in enumerate(self._files):
            offset = 0
            with path.open("rb") as stream:
                for raw in stream:
                    if not raw.endswith(b"\n"):
                        break  # torn by a kill mid-write: that request runs again
                    fields = raw.split(b"\t", 6)
                    if len(fields) in (6, 7):
                        lines.append(int(fields[0]))
                        failed.append(fields[1] != b"200")
                        segments.append(segment)
                        offsets.append(offset)
                        lengths.append(len(raw))
                        reasoning = int(fields[5]) if len(fields) == 7 else 0
                        tokens.extend((int(fields[2]), int(fields[3]), int(fields[4]), reasoning))
                    offset += len(raw)
        all_lines = np.frombuffer(lines, dtype=np.int64) if lines else np.zeros(0, np.int64)
        self.lines, first = np.unique(all_lines, return_index=True)  # sorted, first wins
        self._segment = np.array(segments, dtype=np.int32)[first]
        self._offset = np.array(offsets, dtype=np.int64)[first]
        self._length = np.array(lengths, dtype=np.int64)[first]
        self.errors = int(np.array(failed, dtype=bool)[first].sum())  # lines answered non-200
        totals = np.array(tokens, dtype=np.int64).reshape(-1, 4)[first].sum(axis=0)
        self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens = map(
            int, totals
        )

    def _local_copy(self, storage: BatchStorage, key: str) -> Path:
        local = storage.local_path(key)
        if local is not None:
            return local
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="journal-")
        path = Path(self._tmp.name) / f"{len(self._files):08d}.tsv"
        with storage.open_read(key) as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return path

    def __len__(self) -> int:
        return len(self.lines)

    def records(self, first_line: int, last_line: int) -> dict[int, JournalRecord]:
        """The records of the journaled lines in ``[first_line, last_line]``, bodies loaded."""
        lo, hi = np.searchsorted(self.lines, [first_line, last_line + 1])
        found: dict[int, JournalRecord] = {}
        order = np.lexsort((self._offset[lo:hi], self._segment[lo:hi])) + lo  # file order
        streams: dict[int, IO[bytes]] = {}
        try:
            for i in order.tolist():
                segment = int(self._segment[i])
                if segment not in streams:
                    streams[segment] = self._files[segment].open("rb")
                stream = streams[segment]
                stream.seek(int(self._offset[i]))
                record = _decode(stream.read(int(self._length[i])))
                found[record.line] = record
        finally:
            for stream in streams.values():
                stream.close()
        return found

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "JournalIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(raw: bytes) -> JournalRecord:
    fields = raw.rstrip(b"\n").split(b"\t", 6)
    reasoning = int(fields.pop(5)) if len(fields) == 7 else 0  # absent before reasoning
    line, status, prompt, completion, cached, body = fields
    return JournalRecord(
        int(line),
        int(status),
        int(prompt),
        int(completion),
        int(cached),
        body.decode("utf-8"),
        reasoning,
    )


def read_journal(storage: BatchStorage, prefix: str) -> dict[int, JournalRecord]:
    """Every record of a (small) journal, bodies loaded: for previews and tests."""
    with JournalIndex(storage, prefix) as index:
        if not len(index):
            return {}
        return index.records(int(index.lines[0]), int(index.lines[-1]))


def journaled_lines(storage: BatchStorage, prefix: str) -> np.ndarray:
    """The sorted line numbers that already have a journal record."""
    with JournalIndex(storage, prefix) as index:
        return index.lines
