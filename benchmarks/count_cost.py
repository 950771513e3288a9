"""What counting tokens costs validation: the input step's validation with and without the count.

    .venv/bin/python -m benchmarks.count_cost [--requests 100000] [--repeats 5]
        [--out docs/count-cost-cpu.json]

Writes each workload (``short_chat``, ``shared_prefix`` by default), then times
:func:`validate_input` on it alternately without and with the :class:`LineEstimator` of the
tiny model, in one process, and reports the medians and their ratio. The counter checks itself
against ``Tokenizer.encode`` (its first 256 lines, then one in 1,000); a difference would show
as ``fast_count_note``.
"""

import argparse
import gc
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from batch_assets.input.estimate import LineEstimator
from batch_assets.input.validation import Limits, validate_input
from benchmarks.settings import TINY_MODEL
from benchmarks.workloads import CHAT_URL, CPU_WORKLOADS, bodies, write_jsonl
from resources.engines.base import ServedNames
from resources.layout import BatchPaths
from resources.storage import BatchStorage

MODEL = "tiny-chat"


def measure(requests: int, repeats: int, workload_name: str) -> dict[str, Any]:
    workload = replace(CPU_WORKLOADS[workload_name], requests=requests)
    limits = Limits(4 << 20, 1_000_000, 8 << 30)
    with tempfile.TemporaryDirectory(prefix="count-cost-") as root:
        storage = BatchStorage(root=root)
        write_jsonl(Path(root) / "in.jsonl", CHAT_URL, bodies(workload, MODEL))
        plain, counted, estimate = [], [], None
        for _ in range(repeats):
            gc.collect()
            started = time.perf_counter()
            validate_input(
                storage, "in.jsonl", BatchPaths("batch_a"), ServedNames((MODEL,)), limits
            )
            plain.append(time.perf_counter() - started)
            gc.collect()
            started = time.perf_counter()
            estimator = LineEstimator(str(TINY_MODEL), None)
            report = validate_input(
                storage,
                "in.jsonl",
                BatchPaths("batch_b"),
                ServedNames((MODEL,)),
                limits,
                None,
                estimator,
            )
            counted.append(time.perf_counter() - started)
            estimate = report.estimate
    assert estimate is not None and estimate.counted_lines == requests
    return {
        "workload": workload_name,
        "requests": requests,
        "validate_s": [round(x, 3) for x in plain],
        "validate_and_count_s": [round(x, 3) for x in counted],
        "ratio_of_medians": round(statistics.median(counted) / statistics.median(plain), 2),
        "prompt_tokens": estimate.prompt_tokens,
        "fast_count_note": estimate.note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default="short_chat,shared_prefix")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for name in args.workloads.split(","):
        result = measure(args.requests, args.repeats, name)
        plain = statistics.median(result["validate_s"])
        counted = statistics.median(result["validate_and_count_s"])
        print(
            f"{name}: {args.requests:,} lines: validation {plain:.2f} s, with the count "
            f"{counted:.2f} s ({result['ratio_of_medians']}x); "
            f"{result['prompt_tokens']:,} prompt tokens"
        )
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
