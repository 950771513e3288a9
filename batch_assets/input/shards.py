"""The work area of a batch: request shards and line-error parts, written chunk by chunk.

The input stage cuts the file into chunks of at most ``rows`` lines and
:data:`CHUNK_BODY_BYTES` of request bodies (a file of images has large lines). Each chunk covers a
contiguous range of input lines and becomes at most two parquet files:
``requests/shard-NNNNN.parquet`` (line, custom_id, body) and ``line_errors/part-NNNNN.parquet``
(line, custom_id, code, message). Memory stays flat however long the file: one chunk is held
at a time, and the custom_ids of earlier chunks are remembered as 16-byte digests
(:class:`SeenIds`).

Within a request shard, rows are ordered by model (an adapter is a model; for an in-process
engine) and then by prompt prefix, so requests that share an adapter or a system prompt reach
the engine together and hit its loaded adapters and prefix cache; readers that need input order
(the result writer, the preview) sort a shard by line, and shards follow each other in line
order.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from batch_assets.input.manifest import ShardRef
from resources.layout import BatchPaths
from resources.storage import BatchStorage

REQUEST_SCHEMA = {"line": pl.Int64, "custom_id": pl.String, "body": pl.String}
LINE_ERROR_SCHEMA = {
    "line": pl.Int64,
    "custom_id": pl.String,
    "code": pl.String,
    "message": pl.String,
}


def id_digests(custom_ids: list[str]) -> np.ndarray:
    """128-bit digests of ``custom_ids`` as ``(n, 2)`` uint64 (two seeded 64-bit hashes).

    Comparable within one run of the input stage, which is all they are used for.
    """
    series = pl.Series(custom_ids, dtype=pl.String)
    return np.stack([series.hash(seed=0).to_numpy(), series.hash(seed=1).to_numpy()], axis=1)


class SeenIds:
    """A set of 128-bit digests in a few sorted numpy runs (a tiny LSM tree).

    About 16 bytes per id instead of ~100 for a Python set of strings; lookups and inserts
    work a chunk at a time. A run merges into the one before it when that one is no larger,
    up to ``MAX_RUN`` digests, so merging never needs more than a few MB extra.
    """

    MAX_RUN = 1 << 17

    def __init__(self) -> None:
        # Each run: first halves (sorted) and second halves, as two contiguous arrays.
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(first) for first, _ in self.runs)

    def contains(self, digests: np.ndarray) -> np.ndarray:
        order = np.argsort(digests[:, 0])  # sorted queries search several times faster
        want_first, want_second = digests[order, 0], digests[order, 1]
        hit = np.zeros(len(digests), dtype=bool)
        for first, second in self.runs:
            at = np.minimum(np.searchsorted(first, want_first), len(first) - 1)
            same = first[at] == want_first
            hit |= same & (second[at] == want_second)
            for i in np.flatnonzero(same & ~hit):  # first halves collide: practically never
                end = np.searchsorted(first, want_first[i], side="right")
                hit[i] = bool((second[at[i] : end] == want_second[i]).any())
        found = np.empty_like(hit)
        found[order] = hit
        return found

    def add(self, digests: np.ndarray) -> None:
        first, second = digests[:, 0], digests[:, 1]
        while self.runs and len(self.runs[-1][0]) <= len(first) < self.MAX_RUN:
            earlier_first, earlier_second = self.runs.pop()
            first = np.concatenate([earlier_first, first])
            second = np.concatenate([earlier_second, second])
        if len(first):
            # Sorted by first half (a radix sort); equal first halves are scanned, not ordered.
            order = np.argsort(first, kind="stable")
            self.runs.append((first[order], second[order]))


@dataclass
class LineError:
    line: int
    code: str
    message: str
    custom_id: str | None = None


@dataclass(slots=True)
class ValidLine:
    line: int
    custom_id: str
    body_json: str  # the body exactly as uploaded
    model: str
    prompt_chars: int
    prefix: str  # the start of the prompt, for ordering by shared prefix


@dataclass
class ChunkStats:
    """What the chunks written so far hold."""

    valid: int = 0
    invalid: int = 0
    prompt_chars: int = 0
    models: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)


# A chunk's request bodies in memory at most (and so one shard's, when a run reads it back).
CHUNK_BODY_BYTES = 16 << 20


def _prefix(line: ValidLine) -> str:
    return line.prefix


class ChunkWriter:
    """Collect one chunk of lines at a time and write it as a shard and an error part."""

    def __init__(
        self,
        storage: BatchStorage,
        paths: BatchPaths,
        rows: int,
        order_by_prefix: bool = True,
        group_by_model: bool = True,
    ):
        self.storage, self.paths, self.rows = storage, paths, rows
        self.order_by_prefix, self.group_by_model = order_by_prefix, group_by_model
        self.stats = ChunkStats()
        self.shards: list[ShardRef] = []
        self.error_parts: list[ShardRef] = []
        self._seen = SeenIds()
        self._valid: list[ValidLine] = []
        self._ids: set[str] = set()  # this chunk's custom_ids
        self._errors: list[LineError] = []
        self._body_bytes = 0  # of this chunk's bodies

    def add_valid(self, request: ValidLine) -> None:
        if request.custom_id in self._ids:
            self.add_error(_duplicate(request))
            return
        self._ids.add(request.custom_id)
        self._valid.append(request)
        self._body_bytes += len(request.body_json)
        self._maybe_flush()

    def add_error(self, error: LineError) -> None:
        self._errors.append(error)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (
            len(self._valid) + len(self._errors) >= self.rows
            or self._body_bytes >= CHUNK_BODY_BYTES
        ):
            self.flush()

    def flush(self) -> None:
        """Write the chunk: duplicates of earlier chunks' ids become errors first."""
        if self._valid:
            digests = id_digests([r.custom_id for r in self._valid])
            repeated = self._seen.contains(digests)
            if repeated.any():
                kept = []
                for request, again in zip(self._valid, repeated.tolist(), strict=True):
                    if again:
                        self._errors.append(_duplicate(request))
                    else:
                        kept.append(request)
                self._valid = kept
            self._seen.add(digests[~repeated])
            if self._valid:
                self._write_shard()
        if self._errors:
            self._write_errors()
        self._valid, self._ids, self._errors, self._body_bytes = [], set(), [], 0

    def _write_shard(self) -> None:
        # Lines of one model or adapter together (one engine swaps adapters in and out of a few
        # slots; a pool's servers of several models take their lines at once, so not there),
        # and within them by prompt prefix. Stable: ties keep line order.
        valid = self._valid
        by_model = self.group_by_model and len({r.model for r in valid}) > 1
        if self.order_by_prefix:
            valid = sorted(valid, key=(lambda r: (r.model, r.prefix)) if by_model else _prefix)
        elif by_model:
            valid = sorted(valid, key=lambda r: r.model)
        columns: dict[str, list] = {
            "line": [r.line for r in valid],
            "custom_id": [r.custom_id for r in valid],
            "body": [r.body_json for r in valid],
        }
        key = self.paths.shard(len(self.shards))
        lines = (self._valid[0].line, self._valid[-1].line)
        self.shards.append(self._write(key, columns, REQUEST_SCHEMA, lines))
        self.stats.valid += len(valid)
        self.stats.prompt_chars += sum(r.prompt_chars for r in valid)
        self.stats.models.update(r.model for r in valid)

    def _write_errors(self) -> None:
        errors = sorted(self._errors, key=lambda e: e.line)
        columns: dict[str, list] = {
            "line": [e.line for e in errors],
            "custom_id": [e.custom_id for e in errors],
            "code": [e.code for e in errors],
            "message": [e.message for e in errors],
        }
        key = self.paths.line_error_part(len(self.error_parts))
        lines = (errors[0].line, errors[-1].line)
        self.error_parts.append(self._write(key, columns, LINE_ERROR_SCHEMA, lines))
        self.stats.invalid += len(errors)
        self.stats.error_codes.update(e.code for e in errors)

    def _write(
        self, key: str, columns: dict[str, list], schema: dict, lines: tuple[int, int]
    ) -> ShardRef:
        """Write one parquet file; its manifest entry (rows and line range)."""
        frame = pl.DataFrame(columns, schema=schema)
        with self.storage.open_write(key) as stream:
            frame.write_parquet(stream, compression="lz4")  # 2x zstd's speed; work files
        return ShardRef(key=key, rows=frame.height, first_line=lines[0], last_line=lines[1])

    @property
    def first_error(self) -> LineError | None:
        """The first error of the file (once everything is flushed)."""
        if not self.error_parts:
            return None
        with self.storage.open_read(self.error_parts[0].key) as stream:
            row = pl.read_parquet(stream, n_rows=1).row(0, named=True)
        return LineError(row["line"], row["code"], row["message"], row["custom_id"])


def _duplicate(request: ValidLine) -> LineError:
    return LineError(
        request.line,
        "duplicate_custom_id",
        f"custom_id {request.custom_id!r} already appears on an earlier line",
        request.custom_id,
    )


def read_shard(storage: BatchStorage, key: str, columns: list[str]) -> pl.DataFrame:
    with storage.open_read(key) as stream:
        return pl.read_parquet(stream, columns=columns)


def iter_requests(
    storage: BatchStorage, shards: list[ShardRef], columns: list[str], input_order: bool
) -> Iterator[tuple]:
    """Rows of every request shard: in engine order, or in input order."""
    for shard in shards:
        frame = read_shard(storage, shard.key, columns)
        if input_order:
            frame = frame.sort("line")
        yield from frame.iter_rows()


def iter_line_errors(
    storage: BatchStorage, parts: list[ShardRef]
) -> Iterator[tuple[int, str | None, str, str]]:
    """``(line, custom_id, code, message)`` of every line error, in input order."""
    for part in parts:
        yield from read_shard(storage, part.key, list(LINE_ERROR_SCHEMA)).iter_rows()
