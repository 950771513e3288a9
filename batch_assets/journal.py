"""The journal: finished requests, written as they complete, so a crash loses only in-flight work.

Each run attempt writes its own segment and never touches an older one, so a segment torn by
a kill is only torn at its end; readers skip a torn last line. One record a line:
``line  status_code  prompt_tokens  completion_tokens  cached_tokens  body``, tab-separated;
``body`` is compact JSON, which never contains a raw tab or newline.

In a local folder, records reach the operating system after every engine step (a killed
process loses nothing written) and the disk at least every second. On S3, where an object
cannot be appended to, the records of each interval go up as one more part object
(``<attempt>-<part>.tsv``), so a lost worker loses at most one interval of finished requests.
"""

import os
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from resources.storage import BatchStorage


@dataclass(frozen=True)
class JournalRecord:
    line: int
    status_code: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    body: str

    def encode(self) -> str:
        return (
            f"{self.line}\t{self.status_code}\t{self.prompt_tokens}\t"
            f"{self.completion_tokens}\t{self.cached_tokens}\t{self.body}\n"
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
        local = storage.local_path(f"{prefix}/{attempt}.tsv")
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = local.open("a", encoding="utf-8")
            self._interval = 1.0 if sync_interval_s is None else sync_interval_s
        else:
            self._file = tempfile.TemporaryFile("w+", encoding="utf-8", prefix="journal-")  # noqa: SIM115
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
            key = f"{self.prefix}/{self.attempt}-{self._parts:06d}.tsv"
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


def read_journal(storage: BatchStorage, prefix: str) -> dict[int, JournalRecord]:
    """Every complete record of every segment; the first record of a line wins."""
    records: dict[int, JournalRecord] = {}
    for info in storage.list(prefix):
        if not info.key.endswith(".tsv"):
            continue
        text = storage.read_bytes(info.key).decode("utf-8", errors="replace")
        for raw in text.splitlines(keepends=True):
            if not raw.endswith("\n"):
                break  # torn by a kill mid-write: that request runs again
            fields = raw.rstrip("\n").split("\t", 5)
            if len(fields) != 6:
                continue
            line = int(fields[0])
            if line not in records:
                records[line] = JournalRecord(
                    line, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]), fields[5]
                )
    return records


def journaled_lines(storage: BatchStorage, prefix: str) -> set[int]:
    return set(read_journal(storage, prefix))
