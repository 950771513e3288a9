"""Side (5): a naive client, one request at a time to vLLM's API server on a free local port.

Only the loop over the first ``sample`` requests is timed; the server is started first (its own
process group) and stopped after.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from benchmarks.checks import IncompleteOutput, Totals, check_body
from benchmarks.commands import SideFailed, tail, vllm_env
from benchmarks.measure import Measurement, log
from benchmarks.process_sides import Job, kv_tokens
from benchmarks.settings import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_api_server(base: str, server: subprocess.Popen, job: Job) -> None:
    log_path = job.work_dir / "api_server.log"
    deadline = time.monotonic() + job.timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SideFailed(f"API server exited {server.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise SideFailed(f"API server not ready in {job.timeout_s:.0f} s:\n{tail(log_path)}")


def stop_api_server(server: subprocess.Popen) -> None:
    """Stop the server this module started (its own process group), politely first."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def start_api_server(job: Job, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--disable-uvicorn-access-log"]
    cmd += job.settings.vllm_args(job.runner)
    with (job.work_dir / "api_server.log").open("w") as out:
        return subprocess.Popen(
            cmd,
            env=vllm_env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_naive(job: Job, sample: int) -> Measurement:
    """Side (5): the first ``sample`` requests sent one at a time; only the loop is timed."""
    bodies = job.bodies[:sample]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log(f"{job.workload}: (5) naive loop over {len(bodies)} requests, API server on {base}")
    server = start_api_server(job, port)
    try:
        wait_api_server(base, server, job)
        url = base + job.endpoint
        totals = Totals()
        started = time.perf_counter()
        for i, body in enumerate(bodies):
            response = _post(url, body, job.timeout_s)
            check_body(response, body, job.endpoint, f"naive request {i}")
            totals.add(response.get("usage") or {})
        seconds = time.perf_counter() - started
    finally:
        stop_api_server(server)
    if totals.requests != len(bodies):
        raise IncompleteOutput(f"naive: {totals.requests} answers for {len(bodies)} requests")
    log_text = tail(job.work_dir / "api_server.log", 100_000)
    info = {"kv_tokens": kv_tokens(log_text), "sample_of": len(job.bodies)}
    return job.measurement("naive", seconds, totals, info)
