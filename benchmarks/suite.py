"""The benchmark suite: one command, every workload, every side, one machine, one report.

    .venv/bin/python -m benchmarks.suite                      # the full run (CPU here)
    .venv/bin/python -m benchmarks.suite --scale 0.02         # a smoke run
    .venv/bin/python -m benchmarks.suite --gpu                # one NVIDIA GPU, dummy 8B

For each workload the same request file goes through: (1) raw vLLM in memory (the limit),
(2) this project's inference phase on the same engine object, (3) ``batch-infer run`` as a
whole process, (4) vLLM's ``run_batch`` as a whole process, (5) a naive one-request-at-a-time
client of vLLM's API server on a sample. Then the validation memory benchmark. Every
measurement is a JSON line on stdout; progress goes to stderr; the markdown report, its PNG
charts and a JSON-lines file of all records are written beside ``--out``.
"""

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import machine, memory, report
from benchmarks.commands import run_logged, subprocess_env
from benchmarks.measure import SIDE_GROUPS, Measurement, emit, log
from benchmarks.naive import run_naive
from benchmarks.process_sides import Job, run_e2e, run_run_batch
from benchmarks.settings import ROOT, TINY_MODEL, EngineSettings, cpu_settings, gpu_settings
from benchmarks.workloads import CPU_WORKLOADS, GPU_WORKLOADS, Workload, bodies, write_jsonl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(CPU_WORKLOADS), help="comma list")
    parser.add_argument("--sides", default=",".join(SIDE_GROUPS), help="comma list of sides")
    parser.add_argument(
        "--run-batch-in-process",
        action="store_true",
        help="also run run_batch with VLLM_ENABLE_V1_MULTIPROCESSING=0 (side 4b)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument(
        "--requests", action="append", default=[], metavar="NAME=N", help="a workload's count"
    )
    parser.add_argument(
        "--naive-sample", action="append", default=[], metavar="NAME=N", help="side 5's sample"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of (1) and (2)")
    parser.add_argument("--warmup", type=int, default=1000, help="requests in the warm-up")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory benchmark")
    parser.add_argument(
        "--memory-lines",
        type=int,
        default=None,
        help="lines of the big file (default 1,000,000 x --scale); the small one has a tenth",
    )
    parser.add_argument("--gpu", action="store_true", help="NVIDIA GPU mode: dummy Llama-3-8B")
    parser.add_argument("--gpu-model-dir", type=Path, default=None)
    parser.add_argument("--model", default=str(TINY_MODEL), help="CPU mode's model folder")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request files")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per subprocess")
    return parser.parse_args(argv)


def _pairs(values: list[str]) -> dict[str, int]:
    """``["a=1", "b=2"]`` as ``{"a": 1, "b": 2}``."""
    out = {}
    for value in values:
        name, _, count = value.partition("=")
        out[name.strip()] = int(count)
    return out


def choose_workloads(args: argparse.Namespace) -> list[Workload]:
    """The selected workloads of the mode, scaled, with per-workload counts applied."""
    table = GPU_WORKLOADS if args.gpu else CPU_WORKLOADS
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; known: {', '.join(table)}")
    counts, samples = _pairs(args.requests), _pairs(args.naive_sample)
    chosen = []
    for name in names:
        w = table[name].scaled(args.scale) if args.scale != 1.0 else table[name]
        w = replace(
            w,
            requests=counts.get(name, w.requests),
            naive_sample=samples.get(name, w.naive_sample),
        )
        chosen.append(w)
    return chosen


def base_settings(args: argparse.Namespace, work: Path) -> EngineSettings:
    """The mode's engine settings (GPU mode first builds the dummy 8B model folder)."""
    if not args.gpu:
        return cpu_settings(args.model)
    from benchmarks.gpu_model import build

    folder = build(args.gpu_model_dir or work / "llama3-8b-dummy")
    return gpu_settings(str(folder))


class WorkloadRun:
    """All selected sides of one workload, measured one after another."""

    def __init__(
        self, args: argparse.Namespace, w: Workload, base: EngineSettings, work: Path
    ) -> None:
        self.args, self.w = args, w
        self.sides = {s.strip() for s in args.sides.split(",") if s.strip()}
        self.settings = base
        if w.kv_cache_memory_bytes is not None:
            self.settings = base.with_fields(kv_cache_memory_bytes=w.kv_cache_memory_bytes)
        self.work = work / w.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.file = self.work / "requests.jsonl"
        self.bodies = bodies(w, self.settings.served_model_name, args.seed)
        write_jsonl(self.file, w.endpoint, self.bodies)
        self.report = report.WorkloadReport(w, self.settings.record())
        self.records: list[dict[str, Any]] = []

    def _add(self, m: Measurement) -> None:
        """Record ``m`` (a summary also goes into the report) and emit it."""
        if m.kind == "summary":
            self.report.summaries.append(m)
        record = {"workload": self.w.name, **m.record()}
        self.records.append(record)
        emit(record)

    def _inprocess_sides(self) -> list[str]:
        """(1) and (2) as selected, each followed by its variant when prefixes are compared."""
        sides = [s for s in ("raw", "phase") if s in self.sides]
        if not self.w.prefix_compare:
            return sides
        variant = {"raw": "raw_grouped", "phase": "phase_unordered"}
        return [x for s in sides for x in (s, variant[s])]

    def in_process(self) -> None:
        """Sides (1) and (2) in a child process on one engine (``benchmarks.inprocess``)."""
        sides = self._inprocess_sides()
        if not sides:
            return
        spec = {
            "endpoint": self.w.endpoint,
            "file": str(self.file),
            "engine_fields": self.settings.engine_fields(),
            "work_dir": str(self.work / "inprocess"),
            "sides": sides,
            "prefix_compare": self.w.prefix_compare,
            "warmup": self.args.warmup,
            "repeats": self.args.repeats,
        }
        spec_path, result_path = self.work / "inprocess-spec.json", self.work / "inprocess.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        log(f"{self.w.name}: (1)/(2) in one process: {', '.join(sides)} x{self.args.repeats}")
        cmd = [sys.executable, "-m", "benchmarks.inprocess", str(spec_path), str(result_path)]
        run_logged(cmd, subprocess_env(), self.work / "inprocess.log", self.args.timeout)
        result = json.loads(result_path.read_text())
        self.report.engine = result["engine"]
        self.report.ordering = result["ordering"]
        self._add_inprocess(result["runs"], sides, result["engine"].get("kv_tokens"))

    def _add_inprocess(self, runs: list[dict[str, Any]], sides: list[str], kv: int | None) -> None:
        """Every timed run, then per side the median (token counts from the run nearest it)."""
        counts = ("requests", "seconds", "output_tokens", "prompt_tokens", "cached_tokens")
        for run in runs:
            values = {k: run[k] for k in counts}
            self._add(
                Measurement(self.w.name, run["side"], **values, kind="run", attempt=run["attempt"])
            )
        for side in sides:
            mine = [r for r in runs if r["side"] == side]
            median = statistics.median(r["seconds"] for r in mine)
            mid = min(mine, key=lambda r: abs(r["seconds"] - median))
            values = {k: median if k == "seconds" else mid[k] for k in counts}
            summary = Measurement(
                self.w.name, side, **values, runs=len(mine), extra={"kv_tokens": kv}
            )
            self._add(summary)

    def process_sides(self) -> None:
        """Sides (3), (4), (4b) and (5) as selected; a side that raises is recorded FAILED."""
        job = Job(
            self.w.name,
            self.w.endpoint,
            self.file,
            self.bodies,
            self.settings,
            self.work,
            self.args.timeout,
        )
        planned: list[tuple[str, Callable[[], list[Measurement]]]] = []
        if "e2e" in self.sides:
            planned.append(("e2e", lambda: run_e2e(job)))
        if "run_batch" in self.sides:
            planned.append(("run_batch", lambda: run_run_batch(job, in_process=False)))
            if self.args.run_batch_in_process:
                planned.append(("run_batch_inproc", lambda: run_run_batch(job, in_process=True)))
        if "naive" in self.sides and self.w.naive_sample > 0:
            planned.append(("naive", lambda: [run_naive(job, self.w.naive_sample)]))
        for side, measure_side in planned:
            try:
                for m in measure_side():
                    self._add(m)
            except Exception as exc:
                self.fail(side, exc)

    def fail(self, side: str, exc: BaseException) -> None:
        """Report ``side`` as FAILED with the error, instead of a rate."""
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        self.report.failures[side] = message
        log(f"{self.w.name}: side {side} FAILED: {message[:2000]}")
        emit({"workload": self.w.name, "side": side, "kind": "failure", "error": message})

    def set_ratios(self) -> None:
        """Each summary's requests/s over raw's, emitted as ``ratio`` records."""
        raw = next((m for m in self.report.summaries if m.side == "raw"), None)
        if raw is None or not raw.requests_per_s:
            return
        for m in self.report.summaries:
            m.ratio_to_raw = m.requests_per_s / raw.requests_per_s
            record = {"workload": self.w.name, **m.record()}
            self.records.append({**record, "kind": "ratio"})
            emit({**record, "kind": "ratio"})

    def run(self) -> report.WorkloadReport:
        """Every selected side; a failing side does not stop the others."""
        started = time.monotonic()
        log(f"== {self.w.name}: {self.w.requests:,} requests ({self.w.title})")
        try:
            self.in_process()
        except Exception as exc:
            self.fail("raw+phase", exc)
            traceback.print_exc(file=sys.stderr)
        self.process_sides()
        self.set_ratios()
        self.report.seconds_spent = time.monotonic() - started
        return self.report


def run_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The validation memory benchmark, its records emitted."""
    big = args.memory_lines or max(1000, round(1_000_000 * args.scale))
    result = memory.benchmark(big, work)
    for run in result["runs"]:
        emit({"workload": "memory", "kind": "memory", **run})
    emit({"workload": "memory", "kind": "memory_verdict", **result["verdict"]})
    return result


def default_out(info: dict[str, Any], gpu: bool) -> Path:
    """``benchmarks/results/<date>-<machine>-<mode>.md``."""
    mode = "gpu" if gpu else "cpu"
    return ROOT / "benchmarks" / "results" / f"{machine.today()}-{machine.slug(info)}-{mode}.md"


def main(argv: list[str] | None = None) -> int:
    """Run the suite; exit status 1 if any side failed."""
    args = parse_args(argv)
    started = time.monotonic()
    info = machine.describe()
    out = args.out or default_out(info, args.gpu)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.suite " + shlex.join(argv if argv is not None else sys.argv[1:])
    log(f"work dir {work}; report {out}")
    emit({"kind": "machine", **info})
    suite = report.SuiteReport(info, command.strip(), args.gpu)
    if args.gpu:
        log(report.GPU_ANCHOR)
    if args.scale != 1.0:
        suite.notes.append(f"Request counts scaled by {args.scale} (`--scale`).")
    base = base_settings(args, work)
    emit({"kind": "settings", **base.record()})
    records: list[dict[str, Any]] = [{"kind": "machine", **info}]
    for w in choose_workloads(args):
        run = WorkloadRun(args, w, base, work)
        suite.workloads.append(run.run())
        records += run.records
    if not args.no_memory:
        try:
            suite.memory = run_memory(args, work)
            records.append({"kind": "memory", **suite.memory})
        except Exception as exc:
            log(f"memory benchmark FAILED: {exc}")
            suite.notes.append(f"Memory benchmark failed: {exc}")
    suite.total_s = time.monotonic() - started
    report.write_all(out, suite, records)
    failures = sum(len(r.failures) for r in suite.workloads)
    emit(
        {"kind": "done", "report": str(out), "seconds": round(suite.total_s), "failures": failures}
    )
    log(f"report: {out} ({suite.total_s / 60:.1f} min, {failures} failed sides)")
    if not args.keep_work and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
