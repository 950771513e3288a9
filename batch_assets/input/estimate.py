"""What a batch will cost before it runs: its prompt tokens, counted as the engine will see them,
and the most output tokens its lines allow.

Validation feeds each valid line to :class:`LineEstimator`; the sums go into the manifest (and
from there to the input asset's metadata and ``batch-infer status``). ``batch-infer estimate``
runs the same validation and count over a file without storing anything.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import msgspec

from batch_assets.input.request_schema import ChatBody, plain_messages
from batch_assets.lifecycle.throughput import Eta, RunRate, estimate_eta
from resources.chat_prompt import Uncountable
from resources.endpoints import CHAT_URL
from resources.prompt_tokens import LineTokens, PromptCounter


class TokenEstimate(msgspec.Struct, kw_only=True):
    """Token sums over a batch's valid lines (what ``usage`` will report, where counted)."""

    counted_lines: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0  # the most the lines allow: max_tokens, or the context's room
    over_context: int = 0  # lines whose prompt and max_tokens exceed the context length
    uncounted: dict[str, int] = msgspec.field(default_factory=dict)  # reason -> lines
    tokenizer: str | None = None  # the folder counted with
    context_length: int | None = None
    note: str | None = None  # why nothing was counted, or why the fast count stopped


class LineEstimator:
    """Count each valid line of a batch with the model's tokenizer, if it has a local one."""

    def __init__(self, tokenizer_dir: str, max_model_len: int | None):
        self.estimate = TokenEstimate(tokenizer=tokenizer_dir)
        self.counter: PromptCounter | None = None
        if not Path(tokenizer_dir).is_dir():
            self.estimate.note = (
                f"not counted: the tokenizer {tokenizer_dir!r} is not a local folder "
                "(set the engine's model or tokenizer to one)"
            )
            return
        try:
            self.counter = PromptCounter(tokenizer_dir, max_model_len)
        except (OSError, ValueError) as error:
            self.estimate.note = f"not counted: {error}"
            return
        self.estimate.context_length = self.counter.context

    def add(self, url: str, body: Any, raw_body: bytes) -> None:
        """Count one valid line: ``body`` is its decoded body struct, ``raw_body`` its JSON."""
        if self.counter is None:
            return
        try:
            tokens = self._count(url, body, raw_body)
        except Uncountable as reason:
            key = str(reason)
            self.estimate.uncounted[key] = self.estimate.uncounted.get(key, 0) + 1
            return
        est = self.estimate
        est.counted_lines += 1
        est.prompt_tokens += tokens.prompt
        est.max_output_tokens += tokens.max_output
        est.over_context += tokens.over_context

    def _count(self, url: str, body: Any, raw_body: bytes) -> LineTokens:
        assert self.counter is not None
        if url == CHAT_URL and isinstance(body, ChatBody):
            plain = plain_messages(body)
            if plain is not None:
                asked = body.max_completion_tokens or body.max_tokens
                n = body.n if type(body.n) is int else 1
                counted = self.counter.count_chat(*plain, asked if type(asked) is int else None, n)
                if counted is not None:
                    return counted
        try:
            return self.counter.count(url, msgspec.json.decode(raw_body))
        except Uncountable:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise Uncountable(f"a body the counter cannot read: {error!r}") from error

    def finish(self) -> TokenEstimate:
        if self.counter is not None and self.counter.tokens.fast_disabled_reason:
            self.estimate.note = self.counter.tokens.fast_disabled_reason
        return self.estimate


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def eta_of(estimate: TokenEstimate | None, requests: int, runs: list[RunRate]) -> Eta | None:
    if estimate is None or estimate.counted_lines != requests:  # no token figure for all
        return estimate_eta(runs, requests, None, None)
    return estimate_eta(runs, requests, estimate.prompt_tokens, estimate.max_output_tokens)


def eta_text(eta: Eta | None, model: str) -> str:
    if eta is None:
        return f"unknown: no earlier run of {model} here to take a rate from"
    text = (
        f"{_duration(eta.by_requests_s)} at {eta.requests_per_s:.1f} req/s "
        f"(the last {eta.runs} run(s) of {model}; inference only, not the engine's loading)"
    )
    if eta.at_most_s is not None:
        text += f"; at most {_duration(eta.at_most_s)} if every line used its max tokens"
    return text


def estimate_lines(
    estimate: TokenEstimate | None, requests: int, runs: list[RunRate], model: str
) -> list[str]:
    """The estimate as ``batch-infer status`` and ``estimate`` print it."""
    if estimate is None:
        return ["estimate: none (validated by a version that did not count tokens)"]
    lines = []
    if estimate.counted_lines:
        lines.append(
            f"prompt tokens: {estimate.prompt_tokens:,} over {estimate.counted_lines:,} lines "
            f"(counted with {estimate.tokenizer})"
        )
        lines.append(f"max output tokens: {estimate.max_output_tokens:,}")
    for reason, count in sorted(estimate.uncounted.items()):
        lines.append(f"not counted: {count:,} line(s): {reason}")
    if estimate.over_context:
        lines.append(
            f"over the context ({estimate.context_length} tokens): {estimate.over_context:,} "
            "line(s) will be refused"
        )
    if estimate.note:
        lines.append(f"note: {estimate.note}")
    lines.append(f"eta: {eta_text(eta_of(estimate, requests, runs), model)}")
    return lines


def estimate_metadata(
    estimate: TokenEstimate | None, requests: int, runs: list[RunRate]
) -> dict[str, Any]:
    """The estimate as the input asset's metadata."""
    if estimate is None:
        return {}
    eta = eta_of(estimate, requests, runs)
    metadata: dict[str, Any] = {
        "prompt_tokens": estimate.prompt_tokens,
        "max_output_tokens": estimate.max_output_tokens,
        "counted_lines": estimate.counted_lines,
        "over_context_lines": estimate.over_context,
        "eta_s": dg.MetadataValue.float(round(eta.by_requests_s, 1)) if eta else "unknown",
    }
    if estimate.uncounted:
        metadata["uncounted_lines"] = dg.MetadataValue.json(estimate.uncounted)
    if estimate.note:
        metadata["estimate_note"] = estimate.note
    return metadata
