"""Sides (3) and (4): whole commands in subprocesses, timed from outside.

(3) ``batch-infer run FILE --storage FRESH_DIR`` with the workload's engine flags: the whole
    process (imports, Dagster, engine start, validation, inference, result files); the
    ``batch_inference`` asset's own figures are read back from the run's Dagster instance.
(4) ``python -m vllm.entrypoints.openai.run_batch``: the whole process, as users run it
    (engine in its own process) and optionally with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; its
    batch phase is read from its progress bar (whole seconds).

Side (5), the naive client, is in ``benchmarks.naive``.
"""

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_assets.lifecycle.batches import BatchStatus, read_batch
from benchmarks.checks import IncompleteOutput, Totals, check_batch_output, check_empty_or_missing
from benchmarks.commands import run_logged, subprocess_env, vllm_env
from benchmarks.measure import Measurement, log
from benchmarks.settings import EngineSettings
from resources.endpoints import EMBEDDINGS_URL
from resources.layout import CLI_DAGSTER_HOME, BatchPaths
from resources.storage import BatchStorage

BATCH_INFER = Path(sys.executable).parent / "batch-infer"
_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_BAR = re.compile(r"Running batch: 100% Completed \| (\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


@dataclass
class Job:
    """One workload as the subprocess sides see it."""

    workload: str
    endpoint: str
    file: Path
    bodies: list[dict[str, Any]]
    settings: EngineSettings
    work_dir: Path
    timeout_s: float

    @property
    def runner(self) -> str:
        return "pooling" if self.endpoint == EMBEDDINGS_URL else "generate"

    def measurement(
        self, side: str, seconds: float, totals: Totals, extra: dict[str, Any]
    ) -> Measurement:
        """A summary of ``side`` from the checked answers' totals."""
        return Measurement(
            self.workload,
            side,
            totals.requests,
            seconds,
            output_tokens=totals.output_tokens,
            prompt_tokens=totals.prompt_tokens,
            cached_tokens=totals.cached_tokens,
            extra=extra,
        )


def kv_tokens(log_text: str) -> int | None:
    """The KV cache size vLLM reported (tokens), to show every side had the same."""
    found = _KV_TOKENS.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


def asset_metadata(storage_dir: Path) -> dict[str, Any]:
    """The last ``batch_inference`` materialization's metadata in the run's instance."""
    home = storage_dir / CLI_DAGSTER_HOME
    if not home.is_dir():
        return {}
    try:
        import dagster as dg

        with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("batch_inference"))
            if event is None or event.asset_materialization is None:
                return {}
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}
    except Exception as exc:  # a figure we cannot read is left out, not invented
        log(f"could not read the batch_inference metadata: {exc}")
        return {}


def _asset_measurement(job: Job, storage: Path, requests: int) -> Measurement | None:
    """The ``batch_inference`` asset's own inference wall time, if the run recorded it."""
    meta = asset_metadata(storage)
    wall = meta.get("inference_wall_s")
    if not wall:
        return None
    return Measurement(
        job.workload,
        "e2e_asset",
        int(meta.get("requests_done_this_run", requests)),
        float(wall),
        output_tokens=int(meta.get("completion_tokens", 0)),
        prompt_tokens=int(meta.get("prompt_tokens", 0)),
        cached_tokens=int(meta.get("cached_prompt_tokens", 0)),
        extra={"engine_load_s": meta.get("engine_load_s")},
    )


def run_e2e(job: Job) -> list[Measurement]:
    """Side (3): ``batch-infer run``, fresh storage, whole-process wall time."""
    storage = job.work_dir / "e2e-storage"
    cmd = [str(BATCH_INFER), "run", str(job.file), "--storage", str(storage)]
    cmd += job.settings.batch_infer_args()
    log(f"{job.workload}: (3) batch-infer run")
    seconds, text = run_logged(cmd, subprocess_env(), job.work_dir / "e2e.log", job.timeout_s)
    outputs = sorted(storage.glob(f"**/{BatchPaths('*').output}"))
    if len(outputs) != 1:
        raise IncompleteOutput(f"e2e: expected one output.jsonl under {storage}, found {outputs}")
    totals = check_batch_output(outputs[0], job.bodies, job.endpoint)
    root, paths = outputs[0].parents[2], BatchPaths(outputs[0].parent.name)
    check_empty_or_missing(root / paths.errors)
    batch = read_batch(BatchStorage(root=str(root)), paths.batch_id)
    if batch.status is not BatchStatus.COMPLETED:
        raise IncompleteOutput(f"e2e: batch status {batch.status}")
    info = {"kv_tokens": kv_tokens(text), "command": shlex.join(cmd)}
    asset = _asset_measurement(job, storage, totals.requests)
    return [job.measurement("e2e", seconds, totals, info), *([asset] if asset else [])]


def run_run_batch(job: Job, in_process: bool) -> list[Measurement]:
    """Side (4): vLLM's run_batch on the same file; whole-process wall time."""
    side = "run_batch_inproc" if in_process else "run_batch"
    out = job.work_dir / f"{side}-output.jsonl"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(job.file)]
    cmd += ["-o", str(out), *job.settings.vllm_args(job.runner)]
    log(f"{job.workload}: (4) run_batch, engine {'in-process' if in_process else 'process'}")
    env = vllm_env(in_process)
    seconds, text = run_logged(cmd, env, job.work_dir / f"{side}.log", job.timeout_s)
    totals = check_batch_output(out, job.bodies, job.endpoint)
    info = {"kv_tokens": kv_tokens(text), "in_process": in_process}
    result = [job.measurement(side, seconds, totals, info)]
    bars = _BAR.findall(text)
    if bars:
        done, total, hours, minutes, secs = bars[-1]
        bar_s = int(hours or 0) * 3600 + int(minutes) * 60 + int(secs)
        if int(done) == int(total) == totals.requests and bar_s > 0:
            result.append(job.measurement(f"{side}_bar", float(bar_s), totals, {}))
    return result
