"""Count the tokens of a text with a model's own ``tokenizer.json``, fast enough for validation.

The count is the one the engine sees: the model's tokenizer (the ``tokenizers`` library, no torch,
no transformers). Encoding every line with it costs about 1 microsecond a token, several times
what validating a line costs, so for the common byte-level BPE tokenizers (GPT-2, Llama 3, Qwen
and the tiny test model) the count follows the tokenizer's own pipeline piece by piece instead:

1. split the text at the added tokens (each is one token),
2. split each part with the pre-tokenizer's regex (tokens never cross these pieces),
3. tokenize each distinct piece once with the model (``Tokenizer.model``) and remember its count.

A tokenizer of any other shape is counted with ``encode`` itself. The fast count checks itself
against ``encode`` on its first lines and on one line in :data:`CHECK_EVERY` after that; on a
difference it stops and every later text is encoded in full.
"""

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import regex
from tokenizers import Tokenizer

# The pre-tokenizer regex of ``ByteLevel(use_regex=True)`` (GPT-2's), as in ``tokenizers``.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FIRST_CHECKED = 256  # texts compared with ``encode`` before the fast count is trusted
CHECK_EVERY = 1000
MAX_CACHED_PIECES = 1 << 20
LONG_SEGMENT = 200  # characters: a segment this long is remembered whole (system prompts repeat)
MAX_CACHED_SEGMENTS = 10_000


_ASCII_SPACE = r" \t\n\x0b\x0c\r"  # what \s matches in ASCII text, in Rust's regex and onig
_ASCII_CLASSES = {r"\p{L}": "A-Za-z", r"\p{N}": "0-9", r"\s": _ASCII_SPACE}


def ascii_pattern(pattern: str) -> str | None:
    """``pattern`` as the standard library's ``re`` matches it on ASCII text alone (faster than
    ``regex``), or None if it uses a class this does not translate."""
    out, in_class, k = [], False, 0
    while k < len(pattern):
        char = pattern[k]
        if char == "\\" and k + 1 < len(pattern):
            escape = pattern[k : k + 2]
            if escape == r"\p":
                close = pattern.find("}", k)
                escape = pattern[k : close + 1]
            if escape in _ASCII_CLASSES:
                chars = _ASCII_CLASSES[escape]
                out.append(chars if in_class else f"[{chars}]")
            elif escape == r"\S" and not in_class:
                out.append(f"[^{_ASCII_SPACE}]")
            elif escape[1] in "pPSdDwWbB":
                return None
            else:
                out.append(escape)
            k += len(escape)
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class and pattern[k - 1] not in "[^":
            in_class = False
        out.append(char)
        k += 1
    return "".join(out)


@cache
def _byte_chars() -> list[str]:
    """GPT-2's bytes-to-unicode table: what byte-level BPE models tokenize instead of bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def _split_pattern(spec: dict[str, Any]) -> str | None:
    """The regex that splits text for this tokenizer's pipeline, if the fast count applies."""
    if spec.get("normalizer") is not None:
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return None if pre.get("add_prefix_space") else GPT2_SPLIT
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if (
        split.get("type") != "Split"
        or not isinstance(pattern, str)
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space")
    ):
        return None
    return pattern


class TokenCounter:
    """The number of tokens in a text, as ``Tokenizer.encode`` gives it."""

    def __init__(self, tokenizer_file: str | Path):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        spec = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
        self.specials_added = len(self.tokenizer.encode("a", add_special_tokens=True)) - len(
            self.tokenizer.encode("a", add_special_tokens=False)
        )
        added = spec.get("added_tokens") or []
        pattern = _split_pattern(spec)
        plain_added = all(
            not (t.get("lstrip") or t.get("rstrip") or t.get("single_word")) for t in added
        )
        self.fast = pattern is not None and plain_added and spec["model"].get("type") == "BPE"
        self.fast_disabled_reason: str | None = None
        self._pieces = regex.compile(pattern or GPT2_SPLIT).findall
        ascii_split = ascii_pattern(pattern or GPT2_SPLIT)
        self._ascii_pieces = re.compile(ascii_split).findall if ascii_split else self._pieces
        contents = sorted({t["content"] for t in added}, key=len, reverse=True)
        self._added = frozenset(contents)
        added_pattern = regex.compile(
            "(" + "|".join(map(regex.escape, contents)) + ")" if contents else "(?!)"
        )
        self._split_added, self._find_added = added_pattern.split, added_pattern.search
        self._cache: dict[str, int] = {}
        self._segments: dict[str, int] = {}
        self._seen = 0

    def count(self, text: str, add_special_tokens: bool = False) -> int:
        extra = self.specials_added if add_special_tokens else 0
        if not self.fast:
            return len(self.tokenizer.encode(text, add_special_tokens=False)) + extra
        return self.check(text, self._count_fast(text)) + extra

    def split_added(self, text: str) -> list[str]:
        """``text`` split at its added tokens, which are kept as parts of their own."""
        return [part for part in self._split_added(text) if part]

    def is_added(self, part: str) -> bool:
        return part in self._added

    def has_added(self, text: str) -> bool:
        return self._find_added(text) is not None

    def _count_fast(self, text: str) -> int:
        return sum(
            1 if part in self._added else self.count_segment(part)
            for part in self._split_added(text)
            if part
        )

    def count_segment(self, part: str) -> int:
        """Tokens of a text with no added token in it (fast mode only)."""
        if not part:
            return 0
        long = len(part) > LONG_SEGMENT
        if long and (known := self._segments.get(part)) is not None:  # a shared system prompt
            return known
        pieces = (self._ascii_pieces if part.isascii() else self._pieces)(part)
        if sum(map(len, pieces)) != len(part):  # the regex left a gap: count it whole
            found = len(self.tokenizer.encode(part, add_special_tokens=False))
        else:
            try:
                found = sum(map(self._cache.__getitem__, pieces))
            except KeyError:
                found = sum(self._cache.get(p) or self._tokenize_piece(p) for p in pieces)
        if long:
            if len(self._segments) >= MAX_CACHED_SEGMENTS:
                self._segments.clear()
            self._segments[part] = found
        return found

    def check(self, text: str, counted: int) -> int:
        """``counted`` for ``text``, compared with ``encode`` where a check is due."""
        return self.verify(text, counted) if self.due() else counted

    def due(self) -> bool:
        """Whether the next fast count is to be compared with ``encode``."""
        self._seen += 1
        return self._seen <= FIRST_CHECKED or self._seen % CHECK_EVERY == 0

    def verify(self, text: str, counted: int) -> int:
        """The exact count of ``text``; a difference from ``counted`` ends the fast mode."""
        exact = len(self.tokenizer.encode(text, add_special_tokens=False))
        if exact != counted:
            self.fast = False
            self.fast_disabled_reason = (
                f"the piecewise count gave {counted} tokens where the tokenizer gives "
                f"{exact} (text {self._seen}); every later text is encoded in full"
            )
        return exact

    def _tokenize_piece(self, piece: str) -> int:
        chars = _byte_chars()
        found = len(self.tokenizer.model.tokenize("".join(chars[b] for b in piece.encode())))
        if len(self._cache) >= MAX_CACHED_PIECES:
            self._cache.clear()
        self._cache[piece] = found
        return found
