"""Completeness checks: a side that lost or shortened answers must fail, not report a rate.

Every side's answers are checked for: one answer per request, status 200, and for chat
exactly ``max_tokens`` output tokens (the workloads use ``ignore_eos``); for embeddings a
non-empty vector.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads import custom_id
from resources.endpoints import EMBEDDINGS_URL


class IncompleteOutput(AssertionError):
    """A side's output misses requests or tokens."""


@dataclass
class Totals:
    """Answers and token counts summed over a side's checked responses."""

    requests: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        self.requests += 1
        self.output_tokens += int(usage.get("completion_tokens") or 0)
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        self.cached_tokens += int(details.get("cached_tokens") or 0)


def check_body(
    response: dict[str, Any], request: dict[str, Any], endpoint: str, where: str
) -> None:
    """One OpenAI response body answers ``request`` completely."""
    if endpoint == EMBEDDINGS_URL:
        data = response.get("data") or []
        if len(data) != 1 or not data[0].get("embedding"):
            raise IncompleteOutput(f"{where}: no embedding")
        return
    got = (response.get("usage") or {}).get("completion_tokens")
    if got != request["max_tokens"]:
        raise IncompleteOutput(f"{where}: {got} output tokens, expected {request['max_tokens']}")
    if not response.get("choices"):
        raise IncompleteOutput(f"{where}: no choices")


def check_batch_output(path: Path, bodies: list[dict[str, Any]], endpoint: str) -> Totals:
    """An OpenAI-Batch output file answers every request of ``bodies`` with status 200."""
    if not path.is_file():
        raise IncompleteOutput(f"{path}: no output file")
    wanted = {custom_id(i): body for i, body in enumerate(bodies)}
    seen: set[str] = set()
    totals = Totals()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            cid = item.get("custom_id")
            where = f"{path.name}:{number} ({cid})"
            if cid not in wanted or cid in seen:
                raise IncompleteOutput(f"{where}: unknown or repeated custom_id")
            seen.add(cid)
            response = item.get("response") or {}
            if item.get("error") or response.get("status_code") != 200:
                raise IncompleteOutput(f"{where}: not answered: {line[:300]}")
            body = response.get("body") or {}
            check_body(body, wanted[cid], endpoint, where)
            totals.add(body.get("usage") or {})
    if len(seen) != len(wanted):
        raise IncompleteOutput(f"{path}: {len(seen)} answers for {len(wanted)} requests")
    return totals


def check_empty_or_missing(path: Path) -> None:
    """The errors file of a clean run is absent or has no lines."""
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    if text:
        raise IncompleteOutput(f"{path}: error lines, first: {text.splitlines()[0][:300]}")
