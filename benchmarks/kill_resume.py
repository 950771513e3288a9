"""The crash users cite most: a big file killed (kill -9) late in its run, then resumed.

    .venv/bin/python -m benchmarks.kill_resume [--requests 1000000] [--kill-at 0.9]
        [--max-tokens 4] [--out docs/kill-resume-cpu.json]

Writes ``--requests`` short chats, starts ``batch-infer run`` on them as a user would (its own
process group, a fresh storage folder), watches the journal, and kills the whole process group
with SIGKILL once about ``--kill-at`` of the lines are journaled. Then it runs the same command
again, which resumes the batch, and checks what a user relies on: the resumed run computed only
what the journal lacked (its ``requests_done_before`` plus ``requests_done_this_run`` is the
file's size), and every ``custom_id`` appears exactly once across ``output.jsonl`` and
``errors.jsonl``. Each process tree's peak RSS (the sum over the CLI and any engine process,
sampled every 0.5 s) is reported, so the same command at 100k and 1M shows whether memory
stays flat. ``--max-tokens`` is small by default: the scenario is about the journal, the
resume and memory, not about generation speed.
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from benchmarks.commands import subprocess_env
from benchmarks.settings import ROOT, TINY_MODEL, cpu_settings
from benchmarks.timeline import BATCH_INFER, _events
from benchmarks.workloads import CPU_WORKLOADS, bodies, write_jsonl
from resources.journal import journaled_lines
from resources.layout import CLI_DAGSTER_HOME, WORK, BatchPaths
from resources.storage import BatchStorage

CHUNK = 10_000


def _bodies(requests: int, max_tokens: int, model: str) -> Iterator[dict[str, Any]]:
    """The short-chat bodies, generated a chunk at a time (a million never sit in memory)."""
    base = replace(CPU_WORKLOADS["short_chat"], max_tokens=max_tokens)
    for seed, start in enumerate(range(0, requests, CHUNK)):
        chunk = replace(base, requests=min(CHUNK, requests - start))
        yield from bodies(chunk, model, seed)


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class _Run:
    """One ``batch-infer run`` in its own process group, its tree's RSS sampled."""

    def __init__(self, cmd: list[str], log: Path):
        self.out = log.open("w")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=subprocess_env(),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.process = psutil.Process(self.popen.pid)
        self.peak_rss = 0
        self._sampled = 0.0

    def sample(self) -> bool:
        """Sample the RSS (at most every 0.5 s); False once the process has ended."""
        if time.monotonic() - self._sampled >= 0.5:
            self._sampled = time.monotonic()
            self.peak_rss = max(self.peak_rss, _tree_rss(self.process))
        return self.popen.poll() is None

    def kill(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def wait(self) -> int:
        while self.sample():
            time.sleep(0.1)
        self.out.close()
        return self.popen.returncode

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def _only_batch(storage: BatchStorage, run: _Run) -> str:
    """The batch the run registers (within its first seconds)."""
    while True:
        found = [p.name for p in (Path(storage.root) / WORK).glob("batch_*")]
        if found:
            return found[0]
        if not run.sample():
            raise SystemExit(f"batch-infer run exited {run.popen.returncode} before registering")
        time.sleep(0.5)


def _journaled(storage: BatchStorage, batch_id: str) -> int:
    return len(journaled_lines(storage, BatchPaths(batch_id).journal))


def _answered_once(storage: BatchStorage, batch_id: str) -> dict[str, int]:
    paths = BatchPaths(batch_id)
    seen: set[str] = set()
    lines = duplicates = 0
    for key in (paths.output, paths.errors):
        if not storage.exists(key):
            continue
        with storage.open_read(key) as stream:
            for raw in stream:
                lines += 1
                custom_id = json.loads(raw)["custom_id"]
                duplicates += custom_id in seen
                seen.add(custom_id)
    return {"result_lines": lines, "distinct_custom_ids": len(seen), "duplicates": duplicates}


def benchmark(requests: int, kill_at: float, max_tokens: int, work: Path) -> dict[str, Any]:
    settings = cpu_settings(str(TINY_MODEL))
    upload = work / "requests.jsonl"
    items = _bodies(requests, max_tokens, settings.served_model_name)
    write_jsonl(upload, CPU_WORKLOADS["short_chat"].endpoint, items)
    root = work / "storage"
    storage = BatchStorage(root=str(root), projects=[])
    cmd = [str(BATCH_INFER), "run", str(upload), "--storage", str(root)]
    cmd += settings.batch_infer_args()

    first = _Run(cmd, work / "first.log")
    batch_id = _only_batch(storage, first)
    target = int(requests * kill_at)
    journaled = 0
    while first.sample():
        time.sleep(5 if journaled < target * 0.95 else 0.5)
        journaled = _journaled(storage, batch_id)
        if journaled >= target:
            first.kill()
            break
    if first.popen.returncode != -signal.SIGKILL:
        raise SystemExit("the first run ended before the kill: give it more --requests")
    killed_at = _journaled(storage, batch_id)
    first_s = first.seconds

    second = _Run(cmd, work / "second.log")
    code = second.wait()
    if code != 0:
        raise SystemExit(f"the resumed run exited {code}: see {work / 'second.log'}")
    _, meta = _events(root / CLI_DAGSTER_HOME, newest=True)  # the resumed run
    result: dict[str, Any] = {
        "requests": requests,
        "max_tokens": max_tokens,
        "killed_after_journaled": killed_at,
        "first_run_s": round(first_s, 1),
        "first_run_peak_rss_mib": round(first.peak_rss / 2**20),
        "resumed_run_s": round(second.seconds, 1),
        "resumed_run_peak_rss_mib": round(second.peak_rss / 2**20),
        "resumed_done_before": meta.get("requests_done_before"),
        "resumed_done_this_run": meta.get("requests_done_this_run"),
        **_answered_once(storage, batch_id),
    }
    result["every_line_once"] = (
        result["result_lines"] == requests
        and result["distinct_custom_ids"] == requests
        and result["duplicates"] == 0
    )
    result["computed_only_the_rest"] = (
        result["resumed_done_before"] is not None
        and result["resumed_done_before"] >= killed_at
        and result["resumed_done_before"] + result["resumed_done_this_run"] == requests
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.9)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    result = benchmark(args.requests, args.kill_at, args.max_tokens, work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
