"""Inference phase vs raw ``vllm.LLM.chat``: same engine object, same requests, one process.

    .venv/bin/python -m benchmarks.inference_phase --requests 5000 --max-tokens 16

Both sides run on the one loaded engine (so the engine settings are identical), the prefix
cache is reset before every timed run, a full untimed pass warms the engine up, and the
timed runs alternate their order (raw then ours, ours then raw, ...); medians are compared.
"Ours" is what the ``batch_inference`` asset does: read the parquet shards, build each request
with vLLM's OpenAI request models, feed the engine continuously, build the OpenAI bodies and
journal every answer. Prints one JSON line per run and a summary with the ratio.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

WORDS = (
    "the a batch model prompt token result file night slot queue engine data sensor "
    "asset run write read fast slow green blue red cat dog tree river stone light"
).split()


def make_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [
        [
            {
                "role": "user",
                "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))),
            }
        ]
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-chat"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import ensure
    from vllm import SamplingParams

    from batch_assets.batch_object import BatchPaths
    from batch_assets.inference_loop import InferenceLoop
    from batch_assets.inference_run import pending_requests
    from batch_assets.journal import JournalWriter
    from batch_assets.validation import Limits, validate_input, write_manifest
    from resources.openai_to_vllm import RequestBuilder
    from resources.storage import BatchStorage
    from resources.vllm_engine import VLLMEngine
    from resources.vllm_to_openai import ResponseBuilder

    if args.model.endswith("tiny-chat"):
        ensure(Path(args.model))
    engine = VLLMEngine(model=args.model, served_model_name="bench", max_model_len=512)
    llm = engine.load()
    conversations = make_conversations(args.requests)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    storage = BatchStorage(root=str(work))
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "bench",
                    "messages": conv,
                    "temperature": 0,
                    "max_tokens": args.max_tokens,
                    "ignore_eos": True,
                },
            }
        )
        for i, conv in enumerate(conversations)
    ]
    storage.write_bytes("inbox/bench.jsonl", ("\n".join(lines) + "\n").encode())
    paths = BatchPaths("batch_bench")
    report = validate_input(
        storage, "inbox/bench.jsonl", paths, {"bench"}, Limits(1 << 20, 10_000_000, 1 << 40)
    )
    manifest = write_manifest(storage, paths, {"key": "inbox/bench.jsonl"}, report)
    max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs

    def run_raw() -> tuple[float, int]:
        started = time.perf_counter()
        outputs = llm.chat(conversations, params, use_tqdm=False)
        return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)

    def run_ours(attempt: int) -> tuple[float, int]:
        storage.delete_prefix(paths.journal)
        with JournalWriter(storage, paths.journal, f"bench-{attempt}") as journal:
            loop = InferenceLoop(
                llm,
                RequestBuilder(llm),
                ResponseBuilder("bench", llm.get_tokenizer()),
                journal,
                "batch_bench",
                manifest["endpoint"],
                4 * max_num_seqs,
            )
            started = time.perf_counter()
            stats = loop.run(pending_requests(storage, manifest, set()))
            elapsed = time.perf_counter() - started
        assert stats.requests == args.requests and stats.rejected == 0
        return elapsed, stats.completion_tokens

    # Warm-up on the whole workload: the first pass touches the KV cache's pages.
    run_raw()
    results: dict[str, list[float]] = {"raw_llm_chat": [], "inference_phase": []}
    for attempt in range(args.repeats):
        pair = [("raw_llm_chat", run_raw), ("inference_phase", lambda a=attempt: run_ours(a))]
        for name, fn in pair if attempt % 2 == 0 else pair[::-1]:
            llm.reset_prefix_cache()
            elapsed, tokens = fn()
            assert tokens == args.requests * args.max_tokens, (name, tokens)
            rate = args.requests / elapsed
            results[name].append(rate)
            print(
                json.dumps(
                    {
                        "run": name,
                        "attempt": attempt,
                        "seconds": round(elapsed, 3),
                        "requests_per_s": round(rate, 1),
                        "output_tokens_per_s": round(tokens / elapsed, 1),
                    }
                )
            )
    raw = statistics.median(results["raw_llm_chat"])
    ours = statistics.median(results["inference_phase"])
    print(
        json.dumps(
            {
                "requests": args.requests,
                "max_tokens": args.max_tokens,
                "raw_llm_chat_req_s": round(raw, 1),
                "inference_phase_req_s": round(ours, 1),
                "ratio": round(ours / raw, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
