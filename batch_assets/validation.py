"""Stream an input file, validate each line, and store the valid requests as parquet shards.

The file is read line by line with a bounded buffer, so memory does not grow with the file or
with one enormous line. Bad lines become error rows (line number, code, reason); problems with
the file itself raise :class:`FileRejected`, which fails the batch with a readable reason.
"""

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
import polars as pl

from batch_assets.batch_object import BatchPaths
from batch_assets.request_schema import (
    ENVELOPE_DECODER,
    SUPPORTED_URLS,
    RequestLine,
    decode_body,
    prompt_chars,
)
from resources.storage import BatchStorage

UTF8_BOM = b"\xef\xbb\xbf"
# Magic numbers of common binary formats uploaded by mistake.
BINARY_MAGIC = (b"\x1f\x8b", b"PK\x03\x04", b"%PDF", b"PAR1", b"\x89PNG", b"\xff\xd8\xff")
LINE_ERROR_SCHEMA = {
    "line": pl.Int64,
    "custom_id": pl.String,
    "code": pl.String,
    "message": pl.String,
}


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int
    max_lines: int
    max_file_bytes: int
    shard_rows: int = 10_000


class FileRejected(Exception):
    """The file as a whole cannot be a batch; ``code`` and ``message`` go to batch.json."""

    def __init__(self, code: str, message: str, line: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line


@dataclass
class LineError:
    line: int
    code: str
    message: str
    custom_id: str | None = None


@dataclass(frozen=True)
class ValidLine:
    custom_id: str
    body_json: str  # the body exactly as uploaded
    model: str
    prompt_chars: int


@dataclass
class ValidationReport:
    lines: int = 0
    blank_lines: int = 0
    valid: int = 0
    invalid: int = 0
    endpoint: str | None = None
    prompt_chars: int = 0
    models: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def est_prompt_tokens(self) -> int:
        """A rough estimate (4 characters a token) made without loading a tokenizer."""
        return self.prompt_chars // 4


def iter_raw_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, content)``; content is None for a line over ``max_line_bytes``.

    Handles a UTF-8 BOM, CRLF endings and a missing final newline. Never buffers more than
    ``max_line_bytes`` plus one read chunk.
    """
    number = 0
    while True:
        chunk = stream.readline(max_line_bytes + 2)
        if not chunk:
            return
        number += 1
        if number == 1 and chunk.startswith(UTF8_BOM):
            chunk = chunk[len(UTF8_BOM) :]
        if not chunk.endswith(b"\n") and len(chunk) >= max_line_bytes + 2:
            while (more := stream.readline(1 << 20)) and not more.endswith(b"\n"):
                pass
            yield number, None
            continue
        content = chunk.rstrip(b"\r\n")
        if len(content) > max_line_bytes:
            yield number, None
            continue
        yield number, content


class LineValidator:
    """Decide, line by line, whether a line becomes a request."""

    def __init__(self, served_models: set[str]):
        self.served_models = served_models
        self.endpoint: str | None = None
        self.seen_ids: set[str] = set()

    def check(self, number: int, content: bytes) -> tuple[ValidLine | None, LineError | None]:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, LineError(number, "invalid_utf8", f"line is not valid UTF-8: {exc}")
        try:
            request = ENVELOPE_DECODER.decode(content)
        except msgspec.ValidationError as exc:
            reason = str(exc)
            if reason.startswith("Expected `object`"):
                return None, LineError(
                    number, "invalid_json_line", f"line is a JSON value, not an object: {reason}"
                )
            return None, LineError(number, "invalid_request", reason, _custom_id(content))
        except msgspec.DecodeError as exc:
            return None, LineError(number, "invalid_json_line", f"line is not valid JSON: {exc}")
        return self._check_request(number, request)

    def _check_request(
        self, number: int, request: RequestLine
    ) -> tuple[ValidLine | None, LineError | None]:
        cid = request.custom_id
        if request.method.upper() != "POST":
            return None, LineError(
                number, "invalid_method", f"method must be POST, got {request.method!r}", cid
            )
        if request.url not in SUPPORTED_URLS:
            return None, LineError(
                number,
                "invalid_url",
                f"unsupported url {request.url!r}; use one of {', '.join(SUPPORTED_URLS)}",
                cid,
            )
        if self.endpoint is None:
            self.endpoint = request.url
        elif request.url != self.endpoint:
            return None, LineError(
                number,
                "url_mismatch",
                f"url {request.url!r} differs from "
                f"the batch's endpoint {self.endpoint!r} (set by the first "
                "request)",
                cid,
            )
        try:
            body = decode_body(request.url, request.body)
        except ValueError as exc:
            return None, LineError(number, "invalid_body", f"body: {exc}", cid)
        if body.model not in self.served_models:
            served = ", ".join(sorted(self.served_models))
            return None, LineError(
                number,
                "model_not_found",
                f"model {body.model!r} is not served here (served: {served})",
                cid,
            )
        if cid in self.seen_ids:
            return None, LineError(
                number,
                "duplicate_custom_id",
                f"custom_id {cid!r} already appears on an earlier line",
                cid,
            )
        self.seen_ids.add(cid)
        return ValidLine(
            cid, bytes(request.body).decode("utf-8"), body.model, prompt_chars(body)
        ), None


def _custom_id(content: bytes) -> str | None:
    """The custom_id of a line that failed the envelope schema, if it has a string one."""
    try:
        value = msgspec.json.decode(content, type=dict).get("custom_id")
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None


class ShardWriter:
    """Collect valid requests and write them as parquet shards of ``rows`` requests."""

    def __init__(self, storage: BatchStorage, paths: BatchPaths, rows: int):
        self.storage, self.paths, self.rows = storage, paths, rows
        self.lines: list[int] = []
        self.ids: list[str] = []
        self.bodies: list[str] = []
        self.shards: list[dict[str, Any]] = []

    def add(self, line: int, custom_id: str, body_json: str) -> None:
        self.lines.append(line)
        self.ids.append(custom_id)
        self.bodies.append(body_json)
        if len(self.lines) >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        key = f"{self.paths.shards}/shard-{len(self.shards):05d}.parquet"
        frame = pl.DataFrame(
            {"line": self.lines, "custom_id": self.ids, "body": self.bodies},
            schema={"line": pl.Int64, "custom_id": pl.String, "body": pl.String},
        )
        with self.storage.open_write(key) as stream:
            frame.write_parquet(stream)
        self.shards.append(
            {
                "key": key,
                "rows": frame.height,
                "first_line": self.lines[0],
                "last_line": self.lines[-1],
            }
        )
        self.lines, self.ids, self.bodies = [], [], []


def _reject_binary(head: bytes) -> None:
    if head.startswith(BINARY_MAGIC):
        raise FileRejected("not_text", "the file is a binary or compressed file, not JSONL text")
    sample = head[:8192]
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    if sample and control / len(sample) > 0.1:
        raise FileRejected(
            "not_text",
            "the file does not look like text "
            f"({control} control bytes in its first {len(sample)} bytes)",
        )


def validate_input(
    storage: BatchStorage,
    input_key: str,
    paths: BatchPaths,
    served_models: set[str],
    limits: Limits,
) -> ValidationReport:
    """Validate ``input_key`` into shards and ``line_errors.parquet`` under ``paths.work``."""
    size = storage.stat(input_key).size
    if size == 0:
        raise FileRejected("empty_file", "the file is empty")
    if size > limits.max_file_bytes:
        raise FileRejected(
            "file_too_large",
            f"the file has {size} bytes; the limit is {limits.max_file_bytes} (max_file_bytes)",
        )
    storage.delete_prefix(paths.shards)
    report = ValidationReport()
    validator = LineValidator(served_models)
    shards = ShardWriter(storage, paths, limits.shard_rows)
    errors: list[LineError] = []
    with storage.open_read(input_key) as stream:
        _reject_binary(stream.peek(8192)[:8192] if hasattr(stream, "peek") else b"")
        for number, content in iter_raw_lines(stream, limits.max_line_bytes):
            report.lines = number
            if content is not None and not content.strip():
                report.blank_lines += 1
                continue
            if number - report.blank_lines > limits.max_lines:
                raise FileRejected(
                    "too_many_tasks",
                    f"the file has more than {limits.max_lines} requests (max_lines)",
                    number,
                )
            if content is None:
                error = LineError(
                    number, "line_too_long", f"line is longer than {limits.max_line_bytes} bytes"
                )
                request = None
            else:
                request, error = validator.check(number, content)
            if error is not None:
                errors.append(error)
                report.error_codes[error.code] += 1
                continue
            assert request is not None
            report.valid += 1
            report.models[request.model] += 1
            report.prompt_chars += request.prompt_chars
            shards.add(number, request.custom_id, request.body_json)
    shards.flush()
    report.invalid = len(errors)
    report.endpoint = validator.endpoint
    report.shards = shards.shards
    if report.valid + report.invalid == 0:
        raise FileRejected("empty_file", "the file has no request lines (only blank lines)")
    frame = pl.DataFrame(
        {
            "line": [e.line for e in errors],
            "custom_id": [e.custom_id for e in errors],
            "code": [e.code for e in errors],
            "message": [e.message for e in errors],
        },
        schema=LINE_ERROR_SCHEMA,
    )
    with storage.open_write(paths.line_errors) as stream:
        frame.write_parquet(stream)
    if report.valid == 0:
        first = errors[0]
        raise FileRejected(
            "no_valid_lines",
            f"none of the {report.invalid} request lines is "
            f"valid; first error, line {first.line}: {first.message}",
            first.line,
        )
    return report


def write_manifest(
    storage: BatchStorage, paths: BatchPaths, source: dict[str, Any], report: ValidationReport
) -> dict[str, Any]:
    manifest = {
        "source": source,
        "validated_at": int(time.time()),
        "lines": report.lines,
        "blank_lines": report.blank_lines,
        "requests": report.valid,
        "invalid": report.invalid,
        "endpoint": report.endpoint,
        "models": dict(report.models),
        "error_codes": dict(report.error_codes),
        "est_prompt_tokens": report.est_prompt_tokens,
        "shards": report.shards,
    }
    storage.write_json(paths.manifest, manifest)
    return manifest
