"""What a list page costs with many files: ``files.list`` through ``batch-infer serve``.

    .venv/bin/python -m benchmarks.list_bench [--files 100000] [--s3-files 10000]
        [--out docs/list-bench-cpu.json]

Writes ``--files`` file records into a local folder (as uploads leave them: a record and its
index entry), starts ``batch-infer serve`` on it and times, through the official SDK:

- indexing records written before the index existed (what an upgrade costs, once), then the
  first list call;
- one page of 20, newest first (the median of 20 calls), and one from the middle of the list;
- the whole list paged at 100 (the SDK's auto-pagination).

Then the same on S3 (SeaweedFS on loopback, ``--s3-files`` records: each record is two PUTs).
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from batch_assets.lifecycle.files import (
    FileRecord,
    index_entry,
    iter_file_records,
    new_file_id,
    write_file_record,
)
from batch_assets.lifecycle.listing import ensure_index
from benchmarks.api_bench import _free_port
from benchmarks.settings import ROOT
from resources.layout import FILE_INDEX, FilePaths
from resources.storage import BatchStorage


def _fill(storage: BatchStorage, count: int) -> tuple[float, str]:
    """``count`` upload records, one millisecond apart; the seconds it took, and the id in the
    middle of the list."""
    started = time.perf_counter()
    middle = ""
    base_ms = time.time_ns() // 1_000_000 - count
    for k in range(count):
        file_id = new_file_id(base_ms + k)
        record = FileRecord(
            id=file_id,
            bytes=3,
            created_at=(base_ms + k) // 1000,
            filename=f"f{k}.jsonl",
            purpose="batch",
            status="processed",
            content=FilePaths(file_id).content,
        )
        write_file_record(storage, record)
        if k == count // 2:
            middle = file_id
    return time.perf_counter() - started, middle


def _index_earlier_records(storage: BatchStorage) -> float:
    """What a store written before the index costs once (here: every record has its entry)."""
    started = time.perf_counter()
    ensure_index(storage, FILE_INDEX, lambda: (index_entry(r) for r in iter_file_records(storage)))
    return time.perf_counter() - started


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``batch-infer serve`` on ``env``'s storage, once it answers its OpenAPI document."""
    port = _free_port()
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "batch-infer"), "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
            return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the API did not start")


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(storage: BatchStorage, root_env: dict[str, str], count: int) -> dict[str, Any]:
    fill_s, middle_id = _fill(storage, count)
    index_s = _index_earlier_records(storage)
    process, base = _serve(root_env)
    try:
        sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        first_s = _timed(lambda: sdk.files.list(limit=20))
        pages = [_timed(lambda: sdk.files.list(limit=20)) for _ in range(20)]
        deep = [_timed(lambda: sdk.files.list(limit=20, after=middle_id)) for _ in range(20)]
        started = time.perf_counter()
        seen = sum(1 for _ in sdk.files.list(limit=100))
        whole_s = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    assert seen == count, f"listed {seen} of {count}"
    return {
        "files": count,
        "write_records_s": round(fill_s, 1),
        "index_earlier_records_s (once, on upgrade)": round(index_s, 1),
        "first_list_s": round(first_s, 3),
        "page_of_20_ms (median of 20)": round(statistics.median(pages) * 1000, 1),
        "page_of_20_mid_list_ms (median of 20)": round(statistics.median(deep) * 1000, 1),
        "whole_list_at_100_s": round(whole_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--s3-files", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="list-bench-") as work:
        folder = Path(work) / "storage"
        results["local_folder"] = measure(
            BatchStorage(root=str(folder)), {"BATCH_STORAGE": str(folder)}, args.files
        )
        print(json.dumps(results["local_folder"], indent=2))
        if args.s3_files:
            from tests.seaweedfs import ACCESS_KEY, SECRET_KEY, seaweedfs

            os.environ.update(
                AWS_ACCESS_KEY_ID=ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_REGION="us-east-1",
            )
            with seaweedfs(Path(work) / "seaweedfs") as server:
                server.create_bucket("bench")
                storage = BatchStorage(root="s3://bench/lists", endpoint_url=server.endpoint)
                env = {"BATCH_STORAGE": "s3://bench/lists", "AWS_ENDPOINT_URL": server.endpoint}
                results["s3_seaweedfs"] = measure(storage, env, args.s3_files)
                print(json.dumps(results["s3_seaweedfs"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
