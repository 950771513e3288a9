"""Sides (1) and (2) of one workload, in one process on one engine object.

(1) raw vLLM: ``LLM.chat`` (or ``LLM.embed``) on the requests already parsed in memory.
(2) this project's inference phase, what the ``batch_inference`` asset does: read the parquet
shards written by ``validate_input``, prepare each body with vLLM's OpenAI request models,
feed the engine continuously, build the OpenAI bodies and journal every answer.

Fairness: one engine for both sides; an untimed warm-up of each side; the harness's objects
frozen out of the garbage collector's passes (``gc.freeze``); the prefix cache reset
before every timed run; the order of the sides rotates from one repeat to the next; the suite
compares medians. The suite runs this module as a child process, one per workload:

    python -m benchmarks.inprocess SPEC.json RESULT.json
"""

import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.workloads import expected_output_tokens
from resources.endpoints import EMBEDDINGS_URL
from resources.layout import inbox_key

UPLOAD_KEY = inbox_key("requests.jsonl")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Run = dict[str, Any]


def pending(storage: Any, manifest: Any) -> Iterable[tuple[int, str]]:
    """Every request of ``manifest`` in engine order, as the asset reads them (none done)."""
    import numpy as np

    from batch_assets.inference.asset import pending_requests

    return pending_requests(storage, manifest, np.empty(0, dtype=np.int64))


def sampling(bodies: list[dict[str, Any]]) -> list[Any]:
    """vLLM ``SamplingParams`` for chat bodies (``max_tokens``, ``temperature``, ``ignore_eos``)."""
    from vllm import SamplingParams

    return [
        SamplingParams(
            max_tokens=b["max_tokens"],
            temperature=b.get("temperature", 1.0),
            ignore_eos=b.get("ignore_eos", False),
        )
        for b in bodies
    ]


def prefix_key(body_json: str) -> str:
    """What requests share: the system prompt (first message), or the input's start."""
    body = json.loads(body_json)
    if "messages" in body:
        return json.dumps(body["messages"][0])[:200]
    return str(body.get("input") or body.get("prompt"))[:64]


def adjacency(keys: list[str]) -> float:
    """Share of consecutive requests with the same prefix key (1.0: fully grouped)."""
    if len(keys) < 2:
        return 1.0
    return sum(a == b for a, b in itertools.pairwise(keys)) / (len(keys) - 1)


class Bench:
    """The engine, the workload's requests, and the timed runs of each side."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from resources.engines.vllm_engine import VLLMEngine
        from resources.layout import BatchPaths
        from resources.storage import BatchStorage

        self.endpoint: str = spec["endpoint"]
        self.pooling = self.endpoint == EMBEDDINGS_URL
        lines = Path(spec["file"]).read_text(encoding="utf-8").splitlines()
        self.bodies = [json.loads(line)["body"] for line in lines if line.strip()]
        self.n = len(self.bodies)
        self.expected_tokens = expected_output_tokens(self.bodies)

        self.engine = VLLMEngine(**spec["engine_fields"])
        started = time.perf_counter()
        self.llm = self.engine.load("pooling" if self.pooling else "generate")
        self.load_s = time.perf_counter() - started
        self.served = self.engine.served_model_names[0]
        self.config = self.llm.llm_engine.vllm_config
        asked = self.engine.kv_cache_memory_bytes
        got = self.config.cache_config.kv_cache_memory_bytes
        # Guard: the subprocess sides are given ``asked``; a different size here would make
        # the sides incomparable, so this side fails instead of reporting a rate.
        assert asked is None or got == asked, f"KV cache: asked {asked} bytes, engine has {got}"

        self.storage = BatchStorage(root=str(Path(spec["work_dir"]) / "storage"))
        self.storage.put_file(Path(spec["file"]), UPLOAD_KEY)
        self.paths = {"phase": BatchPaths("batch_ordered")}
        if spec.get("prefix_compare"):
            self.paths["phase_unordered"] = BatchPaths("batch_unordered")
        self.manifests: dict[str, Any] = {}  # side -> its batch_assets.input.manifest.Manifest
        self.ordering: dict[str, Any] = {}

    def engine_info(self) -> dict[str, Any]:
        """What the engine really got: scheduler limits, KV cache, dtype, mode."""
        cache, sched = self.config.cache_config, self.config.scheduler_config
        blocks = cache.num_gpu_blocks
        return {
            "load_s": round(self.load_s, 2),
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.max_num_batched_tokens,
            "block_size": cache.block_size,
            "kv_blocks": blocks,
            "kv_tokens": blocks * cache.block_size if blocks else None,
            "kv_cache_memory_bytes": cache.kv_cache_memory_bytes,
            "enable_prefix_caching": cache.enable_prefix_caching,
            "dtype": str(self.config.model_config.dtype),
            "kv_cache_dtype": str(cache.cache_dtype),
            "enforce_eager": self.config.model_config.enforce_eager,
            "in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
        }

    def validate(self) -> None:
        """Validate the file into shards: prefix ordering on (the default) and, if asked, off."""
        from batch_assets.input.validation import Limits, save_manifest, validate_input
        from batch_assets.lifecycle.batches import SourceRef
        from resources.engines.base import ServedNames

        info = self.storage.stat(UPLOAD_KEY)
        source = SourceRef(key=UPLOAD_KEY, version=info.version, size=info.size)

        for side, paths in self.paths.items():
            limits = Limits(4 << 20, 10_000_000, 1 << 40, order_by_prefix=side == "phase")
            started = time.perf_counter()
            report = validate_input(
                self.storage, UPLOAD_KEY, paths, ServedNames((self.served,)), limits
            )
            seconds = time.perf_counter() - started
            assert report.valid == self.n and report.invalid == 0, (side, report)
            manifest = save_manifest(self.storage, paths, source, report)
            self.manifests[side] = manifest
            keys = [prefix_key(body) for _, body in pending(self.storage, manifest)]
            self.ordering[side] = {
                "validation_s": round(seconds, 3),
                "shards": len(manifest.shards),
                "adjacent_same_prefix": round(adjacency(keys), 4),
            }
        input_keys = [prefix_key(json.dumps(b)) for b in self.bodies]
        self.ordering["input"] = {"adjacent_same_prefix": round(adjacency(input_keys), 4)}

    def run_raw(self, bodies: list[dict[str, Any]]) -> Run:
        """Side (1): ``LLM.embed`` or ``LLM.chat`` on ``bodies``, answers checked."""
        if self.pooling:
            call = partial(self.llm.embed, [b["input"] for b in bodies])
        else:
            call = partial(self.llm.chat, [b["messages"] for b in bodies], sampling(bodies))
        started = time.perf_counter()
        outputs = call(use_tqdm=False)
        seconds = time.perf_counter() - started
        assert len(outputs) == len(bodies), "raw: missing outputs"
        if self.pooling:
            dims = {len(o.outputs.embedding) for o in outputs}
            assert len(dims) == 1 and dims.pop() > 0, "raw embed: empty or ragged embeddings"
            output_tokens = 0
        else:
            got = [len(o.outputs[0].token_ids) for o in outputs]
            want = [b["max_tokens"] for b in bodies]
            output_tokens = sum(got)
            assert got == want, f"raw chat: {output_tokens} output tokens, expected {sum(want)}"
        return {
            "seconds": seconds,
            "requests": len(outputs),
            "output_tokens": output_tokens,
            "prompt_tokens": sum(len(o.prompt_token_ids or ()) for o in outputs),
            "cached_tokens": sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outputs),
        }

    def run_phase(self, side: str, attempt: str, limit: int | None = None) -> Run:
        """Side (2): the asset's inference loop over the shards of ``side``, journaled."""
        from resources.engines.inference_loop import InferenceLoop
        from resources.engines.openai_to_vllm import RequestBuilder
        from resources.engines.vllm_to_openai import ResponseBuilder
        from resources.journal import JournalWriter

        paths, manifest = self.paths[side], self.manifests[side]
        self.storage.delete_prefix(paths.journal)
        todo = pending(self.storage, manifest)
        if limit is not None:
            todo = itertools.islice(todo, limit)
        max_num_seqs = self.config.scheduler_config.max_num_seqs
        with JournalWriter(self.storage, paths.journal, attempt) as journal:
            loop = InferenceLoop(
                llm=self.llm,
                requests=RequestBuilder(self.llm, clamp_max_tokens=self.engine.clamp_max_tokens),
                responses=ResponseBuilder(self.served, self.llm.get_tokenizer()),
                journal=journal,
                batch_id=paths.batch_id,
                endpoint=manifest.endpoint,
                window=self.engine.max_pending_requests or 4 * max_num_seqs,
            )
            started = time.perf_counter()
            stats = loop.run(todo)
            seconds = time.perf_counter() - started
        want = self.n if limit is None else min(limit, self.n)
        assert stats.requests == want and stats.rejected == 0, f"{side}: {stats}"
        if limit is None:
            self._check_journal(side, stats.completion_tokens)
        return {
            "seconds": seconds,
            "requests": stats.requests,
            "output_tokens": stats.completion_tokens,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
        }

    def _check_journal(self, side: str, output_tokens: int) -> None:
        """A full run journaled one status-200 answer per request and every output token."""
        from resources.journal import read_journal

        records = read_journal(self.storage, self.paths[side].journal)
        assert len(records) == self.n, f"{side}: {len(records)} journaled of {self.n}"
        assert all(r.status_code == 200 for r in records.values()), f"{side}: non-200 line"
        assert output_tokens == self.expected_tokens, (
            f"{side}: {output_tokens} output tokens, expected {self.expected_tokens}"
        )

    def side_runner(self, side: str) -> Callable[[int], Run]:
        if side == "raw":
            return lambda attempt: self.run_raw(self.bodies)
        if side == "raw_grouped":
            grouped = sorted(self.bodies, key=lambda b: prefix_key(json.dumps(b)))
            return lambda attempt: self.run_raw(grouped)
        return lambda attempt: self.run_phase(side, f"bench-{attempt}")

    def warm_up(self, sides: list[str], count: int) -> None:
        """Untimed: the first requests through each kind of side (imports, caches, pages)."""
        if count <= 0:
            return
        if any(s.startswith("raw") for s in sides):
            self.run_raw(self.bodies[:count])
        for side in sides:
            if side.startswith("phase"):
                self.run_phase(side, "warmup", limit=count)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then ``spec["repeats"]`` rounds of every side in rotating order."""
    bench = Bench(spec)
    sides: list[str] = spec["sides"]
    if any(s.startswith("phase") for s in sides):
        bench.validate()
    bench.warm_up(sides, min(spec["warmup"], bench.n))
    # The harness's own objects (side (1)'s parsed bodies: a real run has none) leave the
    # collector's view, for both sides alike; vLLM froze the engine's at start-up the same way.
    gc.collect()
    gc.freeze()
    runs: list[Run] = []
    for attempt in range(spec["repeats"]):
        shift = attempt % len(sides)
        for side in sides[shift:] + sides[:shift]:
            bench.llm.reset_prefix_cache()
            run = {"side": side, "attempt": attempt, **bench.side_runner(side)(attempt)}
            runs.append(run)
            sys.stderr.write(f"[inprocess] {json.dumps(run)}\n")
            sys.stderr.flush()
    medians = {
        side: statistics.median(r["seconds"] for r in runs if r["side"] == side) for side in sides
    }
    return {
        "runs": runs,
        "median_seconds": medians,
        "engine": bench.engine_info(),
        "ordering": bench.ordering,
    }


def main() -> None:
    """``python -m benchmarks.inprocess SPEC.json RESULT.json``."""
    spec_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    result = measure(json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
