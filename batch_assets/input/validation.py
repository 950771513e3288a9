"""Stream an input file, validate each line, and store the valid requests as parquet shards.

The file is read line by line with a bounded buffer and written out a chunk at a time
(:mod:`batch_assets.input.shards`), so memory does not grow with the file, with one enormous line
or with a flood of bad lines. Bad lines become error rows (line number, code, reason);
problems with the file itself raise :class:`FileRejected`, which fails the batch with a
readable reason.
"""

import time
from dataclasses import dataclass, field

import msgspec

from batch_assets.input.estimate import LineEstimator, TokenEstimate
from batch_assets.input.manifest import Manifest, ShardRef, write_manifest
from batch_assets.input.request_schema import (
    ENVELOPE_DECODER,
    ChatBody,
    RequestLine,
    decode_body,
    image_urls,
    prompt_summary,
)
from batch_assets.input.shards import ChunkWriter, LineError, ValidLine
from batch_assets.lifecycle.batches import SourceRef
from resources.endpoints import SUPPORTED_URLS, canonical_url
from resources.engines.base import ServedNames
from resources.images import ImagePolicy, image_problem
from resources.layout import BatchPaths
from resources.lines import FileRejected, iter_raw_lines, open_input
from resources.storage import BatchStorage

__all__ = ["FileRejected", "Limits", "LineValidator", "save_manifest", "validate_input"]


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int
    max_lines: int
    max_file_bytes: int
    shard_rows: int = 10_000
    order_by_prefix: bool = True
    group_by_model: bool = True  # one engine takes every line: an adapter's lines go together
    images: ImagePolicy = field(default_factory=ImagePolicy)


@dataclass
class ValidationReport:
    lines: int = 0
    blank_lines: int = 0
    valid: int = 0
    invalid: int = 0
    endpoint: str | None = None
    prompt_chars: int = 0
    models: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    shards: list[ShardRef] = field(default_factory=list)
    error_parts: list[ShardRef] = field(default_factory=list)
    estimate: TokenEstimate | None = None

    @property
    def est_prompt_tokens(self) -> int:
        """A rough estimate (4 characters a token) made without loading a tokenizer."""
        return self.prompt_chars // 4


class LineValidator:
    """Decide, line by line, whether a line becomes a request (duplicates aside)."""

    def __init__(
        self,
        served_models: ServedNames | None,
        endpoint: str | None = None,
        estimator: LineEstimator | None = None,
        images: ImagePolicy | None = None,
    ):
        self.served_models = served_models  # None: the engine's servers decide at run time
        self.images = images or ImagePolicy()
        self.estimator = estimator
        self.endpoint = endpoint  # declared by the batch (the HTTP API), or the first request's
        self._declared = endpoint is not None

    def check(self, number: int, content: bytes) -> ValidLine | LineError:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return LineError(number, "invalid_utf8", f"line is not valid UTF-8: {exc}")
        try:
            request = ENVELOPE_DECODER.decode(content)
        except msgspec.ValidationError as exc:
            reason = str(exc)
            if reason.startswith("Expected `object`"):
                return LineError(
                    number, "invalid_json_line", f"line is a JSON value, not an object: {reason}"
                )
            return LineError(number, "invalid_request", reason, _custom_id(content))
        except msgspec.DecodeError as exc:
            return LineError(number, "invalid_json_line", f"line is not valid JSON: {exc}")
        except RecursionError:
            return LineError(number, "invalid_json_line", "line is nested too deeply")
        return self._check_request(number, request)

    def _check_request(self, number: int, request: RequestLine) -> ValidLine | LineError:
        cid = request.custom_id
        if request.method.upper() != "POST":
            return LineError(
                number, "invalid_method", f"method must be POST, got {request.method!r}", cid
            )
        url = canonical_url(request.url)  # /score is /v1/score, as in vllm run-batch
        if url not in SUPPORTED_URLS:
            return LineError(
                number,
                "invalid_url",
                f"unsupported url {request.url!r}; use one of {', '.join(SUPPORTED_URLS)}",
                cid,
            )
        if self.endpoint is None:
            self.endpoint = url
        elif url != self.endpoint:
            return LineError(
                number,
                "url_mismatch",
                f"url {request.url!r} differs from the batch's endpoint {self.endpoint!r} "
                + (
                    "(set when the batch was created)"
                    if self._declared
                    else "(set by the first request)"
                ),
                cid,
            )
        try:
            body = decode_body(url, request.body)
        except ValueError as exc:
            return LineError(number, "invalid_body", f"body: {exc}", cid)
        if self.served_models is not None and body.model not in self.served_models:
            message = self.served_models.not_found(body.model)
            return LineError(number, "model_not_found", message, cid)
        if isinstance(body, ChatBody):
            for image in image_urls(body):
                if problem := image_problem(image, self.images):
                    return LineError(number, "invalid_image", problem, cid)
        chars, prefix = prompt_summary(body)
        raw_body = bytes(request.body)
        if self.estimator is not None:
            self.estimator.add(url, body, raw_body)
        body_json = raw_body.decode("utf-8")
        return ValidLine(number, cid, body_json, body.model, chars, prefix)


def _custom_id(content: bytes) -> str | None:
    """The custom_id of a line that failed the envelope schema, if it has a string one."""
    try:
        value = msgspec.json.decode(content, type=dict).get("custom_id")
    except (msgspec.DecodeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def validate_input(
    storage: BatchStorage,
    input_key: str,
    paths: BatchPaths,
    served_models: ServedNames | None,
    limits: Limits,
    endpoint: str | None = None,
    estimator: LineEstimator | None = None,
) -> ValidationReport:
    """Validate ``input_key`` into request shards and line-error parts under ``paths.work``.

    ``endpoint`` is the batch's, when it was declared (a batch of the HTTP API); otherwise
    the first request sets it. ``estimator`` counts the tokens of each valid line.
    """
    storage.delete_prefix(paths.shards)
    storage.delete_prefix(paths.line_errors)
    report = ValidationReport()
    validator = LineValidator(served_models, endpoint, estimator, limits.images)
    chunks = ChunkWriter(
        storage, paths, limits.shard_rows, limits.order_by_prefix, limits.group_by_model
    )
    with open_input(storage, input_key, limits.max_file_bytes) as stream:
        for number, content in iter_raw_lines(stream, limits.max_line_bytes):
            report.lines = number
            if content is not None and (not content or content.isspace()):
                report.blank_lines += 1
                continue
            if number - report.blank_lines > limits.max_lines:
                raise FileRejected(
                    "too_many_tasks",
                    f"the file has more than {limits.max_lines} requests (max_lines)",
                    number,
                )
            if content is None:
                chunks.add_error(
                    LineError(
                        number,
                        "line_too_long",
                        f"line is longer than {limits.max_line_bytes} bytes",
                    )
                )
                continue
            checked = validator.check(number, content)
            if isinstance(checked, LineError):
                chunks.add_error(checked)
            else:
                chunks.add_valid(checked)
    chunks.flush()
    stats = chunks.stats
    report.valid, report.invalid = stats.valid, stats.invalid
    report.prompt_chars = stats.prompt_chars
    report.models, report.error_codes = dict(stats.models), dict(stats.error_codes)
    report.endpoint = validator.endpoint
    report.shards, report.error_parts = chunks.shards, chunks.error_parts
    report.estimate = estimator.finish() if estimator is not None else None
    if report.valid + report.invalid == 0:
        raise FileRejected("empty_file", "the file has no request lines (only blank lines)")
    if report.valid == 0:
        first = chunks.first_error
        assert first is not None
        raise FileRejected(
            "no_valid_lines",
            f"none of the {report.invalid} request lines is "
            f"valid; first error, line {first.line}: {first.message}",
            first.line,
        )
    return report


def save_manifest(
    storage: BatchStorage, paths: BatchPaths, source: SourceRef, report: ValidationReport
) -> Manifest:
    """The manifest of a validated file, written to the work area."""
    assert report.endpoint is not None, "a validated file has a valid request, so an endpoint"
    manifest = Manifest(
        source=source,
        validated_at=int(time.time()),
        lines=report.lines,
        blank_lines=report.blank_lines,
        requests=report.valid,
        invalid=report.invalid,
        endpoint=report.endpoint,
        models=report.models,
        error_codes=report.error_codes,
        est_prompt_tokens=report.est_prompt_tokens,
        estimate=report.estimate,
        shards=report.shards,
        error_parts=report.error_parts,
    )
    write_manifest(storage, paths, manifest)
    return manifest
