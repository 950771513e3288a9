"""Measures of the HTTP API on this machine (a report, not a test).

    .venv/bin/python -m benchmarks.api_bench [--upload-gib 1] [--seconds 20] [--clients 50]

1. Upload throughput and the server's peak RSS: one file of ``--upload-gib`` GiB through the
   SDK's ``files.create`` to ``batch-infer serve`` on a local folder.
2. ``GET /v1/batches/{id}`` requests/s under ``--clients`` concurrent clients (one asyncio
   client process sharing the cores with the server).
3. The time from ``batches.create`` to its run starting and to ``in_progress``, under
   ``dagster dev`` with the shipped instance (the API sensor ticks every 5 s).
"""

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from benchmarks.settings import ROOT, TINY_MODEL
from resources.layout import PARTITION_TAG

LINE = (
    json.dumps(
        {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "bench", "messages": [{"role": "user", "content": "hello " * 40}]},
        }
    )
    + "\n"
).encode()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(storage: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "batch-infer"), "serve", "--port", str(port)],
        env={**os.environ, "BATCH_STORAGE": str(storage), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=1)
            return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the API did not start")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def upload(work: Path, gib: float) -> dict[str, Any]:
    file = work / "big.jsonl"
    with file.open("wb") as out:
        block = LINE * ((1 << 20) // len(LINE) + 1)
        while out.tell() < gib * (1 << 30):
            out.write(block)
    size = file.stat().st_size
    process, base = _serve(work / "storage", {})
    try:
        idle_rss = _peak_rss(process.pid)
        sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=3600)
        started = time.perf_counter()
        with file.open("rb") as stream:
            created = sdk.files.create(file=("big.jsonl", stream), purpose="batch")
        seconds = time.perf_counter() - started
        assert created.bytes == size
        return {
            "bytes": size,
            "seconds": round(seconds, 2),
            "mb_per_s": round(size / seconds / 1e6, 1),
            "server_peak_rss_bytes": _peak_rss(process.pid),
            "server_rss_before_bytes": idle_rss,
        }
    finally:
        process.terminate()
        process.wait()
        file.unlink()


async def _hammer(base: str, batch_id: str, clients: int, seconds: float) -> tuple[int, int]:
    done = failed = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:

        async def one_client() -> None:
            nonlocal done, failed
            while time.monotonic() < stop:
                answer = await http.get(f"/batches/{batch_id}")
                if answer.status_code == 200:
                    done += 1
                else:
                    failed += 1

        await asyncio.gather(*[one_client() for _ in range(clients)])
    return done, failed


def batch_reads(work: Path, clients: int, seconds: float) -> dict[str, Any]:
    process, base = _serve(work / "storage-reads", {})
    try:
        sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        file = sdk.files.create(file=("r.jsonl", io.BytesIO(LINE)), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done, failed = asyncio.run(_hammer(base, batch.id, clients, seconds))
        return {
            "clients": clients,
            "seconds": seconds,
            "requests": done,
            "failed": failed,
            "requests_per_s": round(done / seconds, 1),
        }
    finally:
        process.terminate()
        process.wait()


def _dagster_dev(home: Path, env: dict[str, str]) -> subprocess.Popen:
    """``dagster dev`` with the shipped instance in ``home``, once it answers."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    command = [str(ROOT / ".venv" / "bin" / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml")]
    process = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(240):
        try:
            httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("dagster dev did not start")


def create_to_run(work: Path, batches: int = 3) -> dict[str, Any]:
    import dagster as dg

    storage, home = work / "storage-e2e", work / "home"
    env = {
        "BATCH_STORAGE": str(storage),
        "BATCH_MODEL": str(TINY_MODEL),
        "BATCH_SERVED_MODEL_NAME": "bench",
    }
    process, base = _serve(storage, env)
    dev = _dagster_dev(home, env)
    try:
        time.sleep(15)  # the daemon's first sensor ticks
        sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        to_start, to_progress = [], []
        for _ in range(batches):
            file = sdk.files.create(file=("r.jsonl", io.BytesIO(LINE)), purpose="batch")
            created_at = time.time()
            batch = sdk.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while sdk.batches.retrieve(batch.id).status == "validating":
                time.sleep(0.1)
            to_progress.append(time.time() - created_at)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                records = instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: batch.id}))
            to_start.append(records[0].start_time - created_at if records[0].start_time else None)
            while sdk.batches.retrieve(batch.id).status not in ("completed", "failed"):
                time.sleep(0.5)
        return {
            "create_to_run_start_s": [round(s, 1) for s in to_start if s is not None],
            "create_to_in_progress_s": [round(s, 1) for s in to_progress],
        }
    finally:
        process.terminate()
        process.wait()
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upload-gib", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-dagster", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        work = Path(tmp)
        results = {"upload": upload(work, args.upload_gib)}
        print(json.dumps(results), flush=True)
        results["batch_reads"] = batch_reads(work, args.clients, args.seconds)
        print(json.dumps(results["batch_reads"]), flush=True)
        if not args.skip_dagster:
            results["create_to_run"] = create_to_run(work)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
