"""Peak memory of whole batches of image lines: 1,000 and 10,000 lines, one process each.

    .venv/bin/python -m benchmarks.image_memory [--sizes 1000,10000] [--pixels 64]
        [--out docs/image-memory-cpu.json]

Each line is a chat request with its own random-noise PNG as a data: URI (``--pixels`` square;
noise does not compress, so each is as large as a photo of that size). A fresh process runs the
whole batch (validation, inference on the tiny Idefics3 model of
``scripts/make_tiny_model.py --vision``, results) with ``run_file`` on a throwaway Dagster
instance and reports its peak RSS (``ru_maxrss``: the whole process, the engine included),
its RSS once the engine is loaded, and the batch's time. Images are decoded only when their
request goes to the engine, so the peak should not grow with the file, but for vLLM's cache of
processed images (``mm_processor_cache_gb``: off by default here, 4 GiB in ``vllm serve``),
which is measured at both.

    python -m benchmarks.image_memory child FILE MODEL CACHE_GB   # what a measurement runs
"""

import argparse
import base64
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.settings import ROOT, TINY_MODEL

SERVED = "tiny-vision"


def write_file(path: Path, lines: int, pixels: int, seed: int = 0) -> int:
    """``lines`` chat requests, each with a PNG of random noise; returns the file's size."""
    from PIL import Image

    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(lines):
            noise = Image.frombytes("RGB", (pixels, pixels), rng.randbytes(pixels * pixels * 3))
            buffer = io.BytesIO()
            noise.save(buffer, "PNG")
            uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content = [
                {"type": "text", "text": f"describe picture {i}"},
                {"type": "image_url", "image_url": {"url": uri}},
            ]
            body = {
                "model": SERVED,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 8,
                "temperature": 0,
            }
            line = {"custom_id": f"img-{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")
    return path.stat().st_size


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(file: str, model: str, cache_gb: str) -> dict[str, Any]:
    import dagster as dg

    from batch_assets.cli.runner import run_file
    from resources.engines.vllm_engine import VLLMEngine
    from resources.storage import BatchStorage

    engine = VLLMEngine(
        model=model,
        served_model_name=SERVED,
        max_model_len=512,
        keep_loaded=True,
        mm_processor_cache_gb=float(cache_gb),
    )
    engine.load()
    loaded = _rss_bytes()
    with tempfile.TemporaryDirectory(prefix="image-memory-") as root:
        storage = BatchStorage(root=root)
        with dg.instance_for_test() as instance:
            started = time.perf_counter()
            batch = run_file(Path(file), storage, engine, instance=instance)
            seconds = time.perf_counter() - started
    counts = batch["request_counts"]
    assert batch["status"] == "completed" and counts["failed"] == 0, batch
    return {
        "lines": counts["total"],
        "seconds": round(seconds, 1),
        "rss_engine_loaded_bytes": loaded,
        "peak_rss_bytes": _rss_bytes(),
    }


def measure(lines: int, pixels: int, model: Path, work: Path, cache: str) -> dict[str, Any]:
    file = work / f"images-{lines}.jsonl"
    size = write_file(file, lines, pixels)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        *(sys.executable, "-m", "benchmarks.image_memory"),
        *("child", str(file), str(model), cache),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"image memory child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    file.unlink()
    return {"file_bytes": size, "pixels": pixels, "mm_processor_cache_gb": cache, **result}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        print(json.dumps(child(*sys.argv[2:5])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--pixels", type=int, default=64)
    parser.add_argument(
        "--mm-cache-gb",
        default="4,0",
        help="vLLM's processed-image cache sizes to measure (vllm serve's 4 GiB, and off)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import build_vision, ensure

    results = []
    with tempfile.TemporaryDirectory(prefix="image-memory-") as scratch:
        work = Path(scratch)
        model = build_vision(ensure(TINY_MODEL), work / SERVED)
        sizes = [int(n) for n in args.sizes.split(",")]
        for cache, lines in ((c, n) for c in args.mm_cache_gb.split(",") for n in sizes):
            result = measure(lines, args.pixels, model, work, cache)
            print(
                f"{lines:,} image lines ({result['file_bytes'] / 1e6:.0f} MB), image cache "
                f"{cache}: peak RSS "
                f"{result['peak_rss_bytes'] / 1e6:.0f} MB (engine loaded: "
                f"{result['rss_engine_loaded_bytes'] / 1e6:.0f} MB), {result['seconds']} s",
                flush=True,
            )
            results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
