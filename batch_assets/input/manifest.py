"""The manifest of a validated batch (``work/<batch_id>/manifest.json``): one read, one write.

The input stage writes it once the file is validated; every later stage reads it to find the
request shards and line-error parts. ``format`` names the layout of the work area: a manifest
of another format was written by another version of this project, and a batch that meets one
fails with a reason that says so instead of misreading its shards.
"""

import dagster as dg
import msgspec

from batch_assets.input.estimate import TokenEstimate
from batch_assets.lifecycle.batches import SourceRef, fail_batch
from resources.layout import BatchPaths
from resources.storage import BatchStorage

MANIFEST_FORMAT = 2


class ShardRef(msgspec.Struct, frozen=True):
    """One parquet file of the work area and the contiguous range of input lines it covers."""

    key: str
    rows: int
    first_line: int
    last_line: int


class Manifest(msgspec.Struct, kw_only=True):
    format: int = MANIFEST_FORMAT
    source: SourceRef
    validated_at: int
    lines: int  # input lines read, blank ones included
    blank_lines: int
    requests: int  # lines that became requests
    invalid: int  # lines that became line errors
    endpoint: str  # the batch's one url, set by its first valid request
    models: dict[str, int]
    error_codes: dict[str, int]
    est_prompt_tokens: int  # characters / 4: a figure that needs no tokenizer
    shards: list[ShardRef]
    error_parts: list[ShardRef]
    estimate: TokenEstimate | None = None  # counted with the model's tokenizer, where it has one

    @property
    def request_lines(self) -> int:
        """Non-blank input lines: each yields exactly one result line."""
        return self.lines - self.blank_lines


class _Format(msgspec.Struct):
    format: int | None = None


class ManifestFormatError(ValueError):
    """A manifest this version of the project cannot read."""


def read_manifest(storage: BatchStorage, paths: BatchPaths) -> Manifest:
    raw = storage.read_bytes(paths.manifest)
    try:
        found = msgspec.json.decode(raw, type=_Format).format
    except msgspec.DecodeError as error:
        raise ManifestFormatError(f"{storage.url(paths.manifest)} is not valid: {error}") from error
    if found != MANIFEST_FORMAT:
        raise ManifestFormatError(
            f"{storage.url(paths.manifest)} has format {found}, and this version of "
            f"dagster-vllm-batch reads format {MANIFEST_FORMAT}: run the batch with the version "
            f"that validated it, or remove {paths.work}/ to validate it again"
        )
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as error:
        raise ManifestFormatError(f"{storage.url(paths.manifest)} is not valid: {error}") from error


def manifest_or_fail(storage: BatchStorage, paths: BatchPaths) -> Manifest:
    """The batch's manifest; one this version cannot read fails the batch with the reason."""
    try:
        return read_manifest(storage, paths)
    except ManifestFormatError as error:
        fail_batch(storage, paths.batch_id, "unknown_manifest_format", str(error))
        raise dg.Failure(str(error), allow_retries=False) from error


def write_manifest(storage: BatchStorage, paths: BatchPaths, manifest: Manifest) -> None:
    storage.write_bytes(paths.manifest, msgspec.json.format(msgspec.json.encode(manifest)))
