"""What LoRA adapters per line cost: one batch of mixed base/adapter lines against the same lines
all on the base model.

    .venv/bin/python -m benchmarks.lora_mix [--requests 1000] [--repeats 3]
        [--out docs/lora-mix-cpu.json]

Runs whole batches (validation, inference, results; ``run_file`` on a throwaway Dagster
instance) in one process, on the tiny model and a tiny rank-8 adapter
(``scripts/make_tiny_model.py --lora``), each engine loaded once beforehand:

- ``base``: every line on the base model, LoRA off (the engine as it was);
- ``base_lora_on``: every line on the base model, LoRA on (what enabling LoRA costs);
- ``mixed``: every other line names the adapter (``max_loras`` 1);
- ``adapter``: every line on the adapter.

The sides alternate ``--repeats`` times; the medians and their ratios to ``base`` are reported.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from batch_assets.cli.runner import run_file
from benchmarks.settings import TINY_MODEL
from resources.engines.vllm_engine import VLLMEngine
from resources.storage import BatchStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_tiny_model import build_lora

MODEL = "tiny-chat"
ADAPTER = "tiny-lora"


def _content(requests: int, share: int, max_tokens: int) -> str:
    """``requests`` lines, ``share`` of every two on the adapter (0, 1 or 2)."""
    lines = []
    for i in range(requests):
        model = ADAPTER if i % 2 < share else MODEL
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"tell me about river {i}"}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}) + "\n")
    return "".join(lines)


def _run(engine: VLLMEngine, content: str, root: Path, name: str) -> float:
    import dagster as dg

    file = root / f"{name}.jsonl"
    file.write_text(content)
    storage = BatchStorage(root=str(root / "storage"))
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        batch = run_file(file, storage, engine, instance=instance)
        seconds = time.perf_counter() - started
    counts = batch["request_counts"]
    assert batch["status"] == "completed" and counts["failed"] == 0, batch
    return seconds


def measure(requests: int, repeats: int, max_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lora-mix-") as scratch:
        root = Path(scratch)
        adapter = build_lora(TINY_MODEL, root / ADAPTER)
        common: dict[str, Any] = {
            "model": str(TINY_MODEL),
            "served_model_name": MODEL,
            "max_model_len": 512,
            "keep_loaded": True,
        }
        base = VLLMEngine(**common)
        lora = VLLMEngine(
            **common, lora_modules=[f"{ADAPTER}={adapter}"], max_lora_rank=8, max_loras=1
        )
        sides = {
            "base": (base, _content(requests, 0, max_tokens)),
            "base_lora_on": (lora, _content(requests, 0, max_tokens)),
            "mixed": (lora, _content(requests, 1, max_tokens)),
            "adapter": (lora, _content(requests, 2, max_tokens)),
        }
        for engine in (base, lora):  # load each engine before any timing
            _run(engine, _content(8, 1 if engine is lora else 0, 4), root, "warm")
        times: dict[str, list[float]] = {name: [] for name in sides}
        for repeat in range(repeats):
            for name, (engine, content) in sides.items():
                times[name].append(_run(engine, content, root, f"{name}-{repeat}"))
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "requests": requests,
        "max_tokens": max_tokens,
        "seconds": {name: [round(v, 2) for v in values] for name, values in times.items()},
        "median_s": {name: round(v, 2) for name, v in medians.items()},
        "ratio_to_base": {name: round(v / medians["base"], 2) for name, v in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.requests, args.repeats, args.max_tokens)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
