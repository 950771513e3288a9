"""Inference phase vs raw ``vllm.LLM.chat``: same engine object, same requests, one process.

    .venv/bin/python -m benchmarks.inference_phase --requests 5000 --max-tokens 16

Sides (1) and (2) of the suite (``benchmarks.suite``) on the short-chat workload alone, in
this process: one engine for both, an untimed warm-up, the prefix cache reset before every
timed run, the order alternating (raw then ours, ours then raw, ...), medians compared. "Ours"
is what the ``batch_inference`` asset does: read the parquet shards, build each request with
vLLM's OpenAI request models, feed the engine continuously, build the OpenAI bodies and
journal every answer. Prints one JSON line per run and a summary with the ratio.
"""

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.inprocess import measure
from benchmarks.settings import TINY_MODEL, cpu_settings
from benchmarks.workloads import CPU_WORKLOADS, bodies, write_jsonl


def run(requests: int, max_tokens: int, repeats: int, warmup: int, model: str) -> dict[str, Any]:
    """``benchmarks.inprocess.measure`` on a short-chat file of ``requests`` requests."""
    workload = replace(CPU_WORKLOADS["short_chat"], requests=requests, max_tokens=max_tokens)
    settings = cpu_settings(model)
    work = Path(tempfile.mkdtemp(prefix="bench-phase-"))
    file = work / "requests.jsonl"
    write_jsonl(file, workload.endpoint, bodies(workload, settings.served_model_name))
    try:
        return measure(
            {
                "endpoint": workload.endpoint,
                "file": str(file),
                "engine_fields": settings.engine_fields(),
                "work_dir": str(work),
                "sides": ["raw", "phase"],
                "warmup": warmup,
                "repeats": repeats,
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--model", default=str(TINY_MODEL))
    args = parser.parse_args()

    result = run(args.requests, args.max_tokens, args.repeats, args.warmup, args.model)
    names = {"raw": "raw_llm_chat", "phase": "inference_phase"}
    for r in result["runs"]:
        seconds = r["seconds"]
        line = {"run": names[r["side"]], "attempt": r["attempt"], "seconds": round(seconds, 3)}
        line["requests_per_s"] = round(r["requests"] / seconds, 1)
        line["output_tokens_per_s"] = round(r["output_tokens"] / seconds, 1)
        print(json.dumps(line))
    raw = args.requests / result["median_seconds"]["raw"]
    ours = args.requests / result["median_seconds"]["phase"]
    summary = {"requests": args.requests, "max_tokens": args.max_tokens}
    summary.update(raw_llm_chat_req_s=round(raw, 1), inference_phase_req_s=round(ours, 1))
    print(json.dumps({**summary, "ratio": round(ours / raw, 3)}))


if __name__ == "__main__":
    main()
