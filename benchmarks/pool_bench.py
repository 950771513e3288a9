"""Pool mode measured on this machine, every side in one run (a report, not a test).

    .venv/bin/python -m benchmarks.pool_bench [--requests 20000] [--uploads 20]
        [--upload-requests 50] [--skip-dagster] [--out FILE.json]

1. Throughput. The suite's ``short_chat`` requests (``--requests`` of them, 16 greedy
   tokens, ``ignore_eos``), all on the same engine settings (``benchmarks/settings.py``):
   - ``pool_1``: ``batch-infer run --engine-url`` against one vLLM OpenAI server; the
     ``batch_inference`` asset's own ``inference_wall_s`` and the whole process;
   - ``vllm_bench_serve``: vLLM's own serving benchmark (``vllm.benchmarks.serve``) against
     the same server at an unlimited request rate, the same count, 32 input and 16 output
     tokens (``random`` dataset; our prompts are about 4-24 words, under 32 tokens);
   - ``in_process``: ``batch-infer run`` with the engine in the run (its inference phase);
   - ``pool_2``: two servers (a report: both share this machine's cores).
   Every answer file is checked (one answer a request, exactly ``max_tokens`` tokens).
2. Many small batches: ``--uploads`` uploads of ``--upload-requests`` requests dropped into
   the inbox of ``dagster dev`` (the shipped instance) at once, in-process against pool
   mode; the wall time from the first upload to the last ``completed`` batch.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from batch_assets.lifecycle.batches import BatchStatus, list_batches
from benchmarks.api_bench import _dagster_dev
from benchmarks.commands import run_logged, subprocess_env, vllm_env
from benchmarks.measure import log
from benchmarks.naive import free_port, start_api_server, stop_api_server, wait_api_server
from benchmarks.process_sides import Job, asset_metadata, run_e2e
from benchmarks.settings import TINY_MODEL, EngineSettings, cpu_settings
from benchmarks.workloads import CPU_WORKLOADS, bodies, write_jsonl
from resources.layout import inbox_key
from resources.storage import BatchStorage

_BENCH_SERVE = """
import argparse, json, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
keys = ("completed", "duration", "request_throughput", "output_throughput")
print("RESULT " + json.dumps({k: result[k] for k in keys}))
"""


class Servers:
    """vLLM OpenAI servers on the workload's engine settings, started together."""

    def __init__(self, job: Job, count: int):
        self.job, self.ports = job, [free_port() for _ in range(count)]
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> list[str]:
        for n, port in enumerate(self.ports):
            folder = self.job.work_dir / f"server-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            job = Job(**{**self.job.__dict__, "work_dir": folder})
            self.processes.append(start_api_server(job, port))
        for port, process in zip(self.ports, self.processes, strict=True):
            wait_api_server(f"http://127.0.0.1:{port}", process, self.job)
        return [f"http://127.0.0.1:{port}/v1" for port in self.ports]

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            stop_api_server(process)


def _rate(requests: int, seconds: float) -> float:
    return round(requests / seconds, 1) if seconds else 0.0


def pool_run(job: Job, urls: list[str], side: str) -> dict[str, Any]:
    pooled = Job(
        **{
            **job.__dict__,
            "settings": job.settings.with_fields(engine_urls=urls),
            "work_dir": job.work_dir / side,
        }
    )
    pooled.work_dir.mkdir(parents=True, exist_ok=True)
    log(f"{side}: batch-infer run --engine-url x{len(urls)}")
    whole = run_e2e(pooled)[0]
    meta = asset_metadata(pooled.work_dir / "e2e-storage")
    phase = float(meta["inference_wall_s"])
    return {
        "side": side,
        "servers": len(urls),
        "requests": whole.requests,
        "phase_s": phase,
        "phase_requests_per_s": _rate(whole.requests, phase),
        "process_s": round(whole.seconds, 2),
    }


def in_process_run(job: Job) -> dict[str, Any]:
    local = Job(**{**job.__dict__, "work_dir": job.work_dir / "in_process"})
    local.work_dir.mkdir(parents=True, exist_ok=True)
    log("in_process: batch-infer run")
    whole = run_e2e(local)[0]
    meta = asset_metadata(local.work_dir / "e2e-storage")
    phase = float(meta["inference_wall_s"])
    return {
        "side": "in_process",
        "requests": whole.requests,
        "phase_s": phase,
        "phase_requests_per_s": _rate(whole.requests, phase),
        "engine_load_s": meta.get("engine_load_s"),
        "process_s": round(whole.seconds, 2),
    }


def bench_serve(job: Job, url: str, requests: int) -> dict[str, Any]:
    log("vllm_bench_serve: vllm.benchmarks.serve, request rate inf")
    base = url.removesuffix("/v1")
    cmd = [sys.executable, "-c", _BENCH_SERVE, "--backend", "openai-chat", "--base-url", base]
    cmd += ["--endpoint", "/v1/chat/completions", "--model", str(job.settings.engine.model)]
    cmd += ["--served-model-name", job.settings.served_model_name, "--dataset-name", "random"]
    cmd += ["--random-input-len", "32", "--random-output-len", "16", "--ignore-eos"]
    cmd += ["--num-prompts", str(requests), "--request-rate", "inf", "--disable-tqdm"]
    _, text = run_logged(cmd, vllm_env(), job.work_dir / "bench_serve.log", job.timeout_s)
    line = next(raw for raw in text.splitlines() if raw.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return {
        "side": "vllm_bench_serve",
        "requests": result["completed"],
        "phase_s": round(result["duration"], 3),
        "phase_requests_per_s": round(result["request_throughput"], 1),
    }


def many_small_batches(
    settings: EngineSettings, work: Path, uploads: int, each: int, urls: list[str] | None
) -> dict[str, Any]:
    """``uploads`` files dropped into a ``dagster dev`` inbox at once; first drop to last done."""
    mode = "pool" if urls else "in_process"
    storage_dir, home = work / f"dev-{mode}" / "storage", work / f"dev-{mode}" / "home"
    env = {
        "BATCH_STORAGE": str(storage_dir),
        "BATCH_MODEL": str(settings.engine.model),
        "BATCH_SERVED_MODEL_NAME": settings.served_model_name,
        **({"BATCH_ENGINE_URLS": ",".join(urls)} if urls else {}),
    }
    files = []
    for n in range(uploads):
        file = work / f"uploads-{mode}" / f"small-{n:02d}.jsonl"
        file.parent.mkdir(parents=True, exist_ok=True)
        small = replace(CPU_WORKLOADS["short_chat"], requests=each)
        write_jsonl(file, small.endpoint, bodies(small, settings.served_model_name, seed=n))
        files.append(file)
    log(f"many small batches ({mode}): dagster dev, {uploads} uploads of {each}")
    dev = _dagster_dev(home, {**subprocess_env(), **env})
    storage = BatchStorage(root=str(storage_dir))
    try:
        time.sleep(15)  # the daemon's first ticks
        first = time.time()
        for file in files:
            storage.put_file(file, inbox_key(file.name))
        deadline = time.monotonic() + 3600
        while True:
            batches = list_batches(storage)
            done = [b for b in batches if b.status.ended]
            if len(done) == uploads:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: only {len(done)} of {uploads} batches finished")
            time.sleep(1)
        counts = [(b.status, b.request_counts.completed) for b in done]
        assert counts == [(BatchStatus.COMPLETED, each)] * uploads, counts
        finished = sorted(float(b.completed_at or 0) - first for b in done)
        return {
            "mode": mode,
            "uploads": uploads,
            "requests_each": each,
            "wall_s": round(finished[-1], 1),
            "finished_after_s": [round(s, 1) for s in finished],
        }
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--upload-requests", type=int, default=50)
    parser.add_argument("--skip-dagster", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true", help="only part 2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settings = cpu_settings(str(TINY_MODEL))
    workload = replace(CPU_WORKLOADS["short_chat"], requests=args.requests)
    results: dict[str, Any] = {"settings": settings.record()}
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        work = Path(tmp)
        items = bodies(workload, settings.served_model_name, seed=0)
        file = work / "short_chat.jsonl"
        write_jsonl(file, workload.endpoint, items)
        job = Job("short_chat", workload.endpoint, file, items, settings, work, 7200)
        results["ratios"] = {}
        if not args.skip_throughput:
            sides: list[dict[str, Any]] = []
            with Servers(job, 1) as urls:
                sides.append(pool_run(job, urls, "pool_1"))
                sides.append(bench_serve(job, urls[0], args.requests))
            sides.append(in_process_run(job))
            with Servers(job, 2) as urls:
                sides.append(pool_run(job, urls, "pool_2"))
            results["throughput"] = sides
            rate = {s["side"]: s["phase_requests_per_s"] for s in sides}
            results["ratios"] = {
                "pool_1 / vllm_bench_serve": round(rate["pool_1"] / rate["vllm_bench_serve"], 3),
                "pool_1 / in_process": round(rate["pool_1"] / rate["in_process"], 3),
                "pool_2 / pool_1": round(rate["pool_2"] / rate["pool_1"], 3),
            }
            print(json.dumps(results), flush=True)
        if not args.skip_dagster:
            small = [many_small_batches(settings, work, args.uploads, args.upload_requests, None)]
            print(json.dumps(small[0]), flush=True)
            with Servers(job, 1) as urls:
                small.append(
                    many_small_batches(settings, work, args.uploads, args.upload_requests, urls)
                )
            results["many_small_batches"] = small
            results["ratios"]["many_small: in_process wall / pool wall"] = round(
                small[0]["wall_s"] / small[1]["wall_s"], 2
            )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
