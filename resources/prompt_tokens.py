"""The tokens one request line will cost: its prompt as the engine sees it, its most output.

Prompt tokens are counted with the model's tokenizer and chat template
(:mod:`resources.token_count`, :mod:`resources.chat_prompt`), as vLLM's request models count
them: a chat prompt rendered with
``add_generation_prompt`` and tokenized without added special tokens, a completion's or an
embedding's input with them. Output tokens are what the line allows: ``max_completion_tokens`` or
``max_tokens`` (16 for a completion, as in vLLM), or the room left in the context where a chat line
sets none, times ``n``.
"""

import json
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resources.chat_prompt import ChatTemplate, Uncountable, fill, read_chat_template
from resources.endpoints import CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL
from resources.token_count import TokenCounter

__all__ = ["LineTokens", "PromptCounter", "Uncountable", "context_length"]

COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest default, as OpenAI's
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


@dataclass(frozen=True)
class _ChatPlan:
    """How to count a plain chat line of one shape: the template's pieces counted once, and
    the segments (text between two added tokens) that hold a message's text, as a recipe of
    template text (``str``) and message indexes (``int``)."""

    pieces: list[str]  # the template's text before each message's text, and after the last
    fixed: int  # tokens of the template's text outside the segments
    segments: list[list[str | int]]
    alone: list[int] | None  # the message indexes, when each segment is one message's text


@dataclass(frozen=True)
class LineTokens:
    prompt: int
    max_output: int
    over_context: bool  # the prompt (with its output) does not fit: the engine will refuse it


def context_length(model_dir: Path, max_model_len: int | None) -> int | None:
    """The engine's context length: ``max_model_len`` if set, else the model config's."""
    if max_model_len:
        return max_model_len
    config = model_dir / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    data = data.get("text_config") or data
    return next((int(data[k]) for k in _CONTEXT_KEYS if isinstance(data.get(k), int)), None)


def _special_tokens(model_dir: Path) -> dict[str, str]:
    config = model_dir / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    found = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = data.get(key)
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if isinstance(value, str):
            found[key] = value
    return found


class PromptCounter:
    """Count request lines for one model folder (its ``tokenizer.json``)."""

    def __init__(self, model_dir: str | Path, max_model_len: int | None = None):
        folder = Path(model_dir)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} does not exist")
        self.tokens = TokenCounter(tokenizer_file)
        source = read_chat_template(folder)
        self.template = ChatTemplate(source, _special_tokens(folder)) if source else None
        self.context = context_length(folder, max_model_len)
        self._plans: dict[Hashable, _ChatPlan | None] = {}

    def count_chat(
        self, roles: tuple[str, ...], texts: list[str], asked: int | None, n: int
    ) -> LineTokens | None:
        """A chat line of plain messages (a role and a text each, nothing else set), or None
        when it must be counted from its whole body (:meth:`count`)."""
        if self.template is None or not self.tokens.fast:
            return None
        key: Hashable = (roles, tuple(map(bool, texts))) if "" in texts else roles
        plan = self._plans.get(key)
        if plan is None:
            if key in self._plans:
                return None
            role = self.template.role
            shape = tuple((role(r), bool(t)) for r, t in zip(roles, texts, strict=True))
            plan = self._plans[key] = self._plan(shape)
            if plan is None:
                return None
        if self.tokens.has_added("\x00".join(texts)):  # no added token holds a NUL
            return None
        count = self.tokens.count_segment
        if plan.alone is not None:  # each text between two added tokens: counted by itself
            prompt = plan.fixed + sum(count(texts[k]) for k in plan.alone)
        else:
            prompt = plan.fixed + sum(
                count("".join(p if isinstance(p, str) else texts[p] for p in recipe))
                for recipe in plan.segments
            )
        if self.tokens.due():
            whole = fill(plan.pieces, texts)
            prompt = self.tokens.verify(whole, prompt)
        return self._chat_line(prompt, asked, n)

    def _plan(self, shape: tuple[tuple[str, bool], ...]) -> _ChatPlan | None:
        assert self.template is not None
        pieces = self.template.pieces(shape)
        if pieces is None:
            return None
        # Walk the template's text and the messages' texts in order; an added token closes the
        # segment being built. A segment with no message text in it is counted here, once.
        fixed = 0
        segments: list[list[str | int]] = []
        current: list[str | int] = []
        for k, piece in enumerate(pieces):
            for part in self.tokens.split_added(piece):
                if self.tokens.is_added(part):
                    fixed += 1
                    fixed += self._close(current, segments)
                    current = []
                else:
                    current.append(part)
            if k < len(shape):
                current.append(k)
        fixed += self._close(current, segments)
        alone = [r[0] for r in segments if len(r) == 1 and isinstance(r[0], int)]
        return _ChatPlan(pieces, fixed, segments, alone if len(alone) == len(segments) else None)

    def _close(self, recipe: list[str | int], segments: list[list[str | int]]) -> int:
        """Keep a segment that holds a message's text; the tokens of one that holds none."""
        if any(isinstance(p, int) for p in recipe):
            segments.append(recipe)
            return 0
        return self.tokens.count_segment("".join(p for p in recipe if isinstance(p, str)))

    def _chat_line(self, prompt: int, asked: int | None, n: int) -> LineTokens:
        room = (self.context - prompt) if self.context else 0
        return LineTokens(prompt, (asked or max(room, 0)) * n, self._over(prompt, asked))

    def count(self, url: str, body: dict[str, Any]) -> LineTokens:
        """The tokens of one valid request body (raises :class:`Uncountable`)."""
        if url == CHAT_URL:
            asked = body.get("max_completion_tokens") or body.get("max_tokens")
            return self._chat_line(self._chat_prompt(body), asked, int(body.get("n") or 1))
        if url in (COMPLETIONS_URL, EMBEDDINGS_URL):
            key = "prompt" if url == COMPLETIONS_URL else "input"
            prompts = self._prompts(body[key], bool(body.get("add_special_tokens", True)))
            if url == EMBEDDINGS_URL:
                return LineTokens(sum(prompts), 0, any(self._over(p, 0) for p in prompts))
            asked = body.get("max_tokens", COMPLETION_DEFAULT_MAX_TOKENS) or 0
            output = asked * int(body.get("n") or 1) * len(prompts)
            return LineTokens(sum(prompts), output, any(self._over(p, asked) for p in prompts))
        raise Uncountable(f"{url} lines are not counted")

    def _over(self, prompt: int, asked: int | None) -> bool:
        return self.context is not None and prompt + (asked or 0) > self.context

    def _chat_prompt(self, body: dict[str, Any]) -> int:
        if self.template is None:
            raise Uncountable("the model has no chat template")
        text = self.template.render(body)
        return self.tokens.count(text, bool(body.get("add_special_tokens", False)))

    def _prompts(self, given: Any, add_special_tokens: bool) -> list[int]:
        """Each prompt's tokens: a string, strings, token ids or lists of token ids."""
        if isinstance(given, str):
            return [self.tokens.count(given, add_special_tokens)]
        if given and all(type(v) is int for v in given):
            return [len(given)]
        return [
            self.tokens.count(v, add_special_tokens) if isinstance(v, str) else len(v)
            for v in given
        ]
