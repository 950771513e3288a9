"""The journal: finished requests, written as they complete, so a crash loses only in-flight work.

Each run attempt appends to its own segment file (``journal/<attempt>.tsv``), never to an older
one, so a segment torn by a kill is only ever torn at its end; readers skip a torn last line.
One record a line: ``line  status_code  prompt_tokens  completion_tokens  cached_tokens  body``,
tab-separated; ``body`` is compact JSON, which never contains a raw tab or newline.
Records reach the operating system after every engine step (a killed process loses nothing
written) and the disk at least every ``fsync_interval_s`` seconds and on close.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class JournalRecord:
    line: int
    status_code: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    body: str


class JournalWriter:
    def __init__(self, folder: Path, attempt: str, fsync_interval_s: float = 1.0):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{attempt}.tsv"
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._fsync_interval_s = fsync_interval_s
        self._last_sync = time.monotonic()
        self.written = 0

    def write(self, record: JournalRecord) -> None:
        self._file.write(
            f"{record.line}\t{record.status_code}\t{record.prompt_tokens}\t"
            f"{record.completion_tokens}\t{record.cached_tokens}\t{record.body}\n"
        )
        self.written += 1

    def flush(self) -> None:
        self._file.flush()
        if time.monotonic() - self._last_sync >= self._fsync_interval_s:
            os.fsync(self._file.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "JournalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(folder: Path) -> dict[int, JournalRecord]:
    """Every complete record in every segment; the first record of a line wins."""
    records: dict[int, JournalRecord] = {}
    if not folder.is_dir():
        return records
    for segment in sorted(folder.glob("*.tsv")):
        with segment.open(encoding="utf-8", errors="replace") as stream:
            for raw in stream:
                if not raw.endswith("\n"):
                    break  # torn by a kill mid-write: the request runs again
                fields = raw.rstrip("\n").split("\t", 5)
                if len(fields) != 6:
                    continue
                line = int(fields[0])
                if line not in records:
                    records[line] = JournalRecord(
                        line,
                        int(fields[1]),
                        int(fields[2]),
                        int(fields[3]),
                        int(fields[4]),
                        fields[5],
                    )
    return records


def journaled_lines(folder: Path) -> set[int]:
    return set(read_journal(folder))
