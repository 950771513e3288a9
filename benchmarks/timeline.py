"""Where the seconds of one ``batch-infer run`` go: a timeline from the process start to its exit.

    .venv/bin/python -m benchmarks.timeline [--requests 10000] [--out docs/timeline-cpu.json]

Runs ``batch-infer run`` as a user would (a fresh process, a fresh storage folder) on the
``short_chat`` workload, then reads the run's own Dagster events from the CLI's instance
beside the batches: when the run started (everything before it is the process start,
imports, upload and registration), each step's start and end, and the inference asset's
``engine_load_s`` and ``inference_wall_s``. Prints one line per phase and writes them as JSON.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.commands import run_logged, subprocess_env
from benchmarks.settings import TINY_MODEL, cpu_settings
from benchmarks.workloads import CPU_WORKLOADS, bodies, write_jsonl
from resources.layout import CLI_DAGSTER_HOME

BATCH_INFER = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "batch-infer"
STEPS = ("batch_input", "batch_inference", "batch_results")


def _events(home: Path, newest: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Event times (epoch seconds) of the one run in ``home`` (or of its newest run), and the
    inference metadata."""
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        runs = instance.get_run_records()  # newest first
        run = runs[0] if newest else runs[-1]
        if not newest and len(runs) != 1:
            raise RuntimeError(f"{home}: {len(runs)} runs, expected one")
        times: dict[str, float] = {}
        metadata: dict[str, Any] = {}
        for record in instance.all_logs(run.dagster_run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            kind, step = event.event_type.name, event.step_key or ""
            if kind in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE"):
                times[kind] = record.timestamp
            elif kind in ("STEP_START", "STEP_SUCCESS"):
                times[f"{step}:{kind}"] = record.timestamp
            elif kind == "ASSET_MATERIALIZATION" and step == "batch_inference":
                materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
                metadata = {k: v.value for k, v in materialization.metadata.items()}
    return times, metadata


def timeline(requests: int, work: Path) -> list[dict[str, Any]]:
    settings = cpu_settings(str(TINY_MODEL))
    workload = CPU_WORKLOADS["short_chat"]
    workload = workload.scaled(requests / workload.requests)
    upload = work / "short_chat.jsonl"
    write_jsonl(upload, workload.endpoint, bodies(workload, settings.served_model_name))
    storage = work / "storage"
    cmd = [str(BATCH_INFER), "run", str(upload), "--storage", str(storage)]
    cmd += settings.batch_infer_args()
    started = time.time()
    seconds, _ = run_logged(cmd, subprocess_env(), work / "run.log", 3600)
    ended = started + seconds
    times, meta = _events(storage / CLI_DAGSTER_HOME)
    load = float(meta.get("engine_load_s", 0.0))
    phases = [("process start, imports, upload, registration", started, times["RUN_START"])]
    previous = times["RUN_START"]
    for step in STEPS:
        begin, end = times[f"{step}:STEP_START"], times[f"{step}:STEP_SUCCESS"]
        phases.append((f"between steps (before {step})", previous, begin))
        if step == "batch_inference":
            phases.append(("engine load", begin, begin + load))
            phases.append(("inference (load to last answer) and step wrap-up", begin + load, end))
        else:
            phases.append((step, begin, end))
        previous = end
    phases.append(("run end, summary, process exit", previous, ended))
    rows = [
        {"phase": name, "start_s": round(a - started, 3), "seconds": round(b - a, 3)}
        for name, a, b in phases
    ]
    rows.append({"phase": "total", "start_s": 0.0, "seconds": round(seconds, 3)})
    rows.append({"phase": "inference_wall_s (the loop)", "seconds": meta.get("inference_wall_s")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="timeline-") as work:
        rows = timeline(args.requests, Path(work))
    for row in rows:
        print(f"{row.get('start_s', ''):>9}  {row['seconds']:>9}  {row['phase']}")
    if args.out:
        args.out.write_text(json.dumps({"requests": args.requests, "phases": rows}, indent=2))


if __name__ == "__main__":
    main()
