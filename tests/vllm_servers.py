"""Real vLLM OpenAI servers for the pool tests (scripts/engine_server.py), and a recorder."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import MODEL_NAME, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from engine_server import server_command, server_env

START_TIMEOUT_S = 300  # ~25 s alone here; several starting at once share two cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` on the tiny model, in its own session."""

    def __init__(
        self,
        model: Path,
        log_dir: Path,
        served_model_name: str = MODEL_NAME,
        extra: list[str] | None = None,
    ):
        self.model, self.log_dir, self.served_model_name = model, log_dir, served_model_name
        self.extra = extra or []  # further vllm serve flags
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "VLLMServer":
        log = (self.log_dir / f"vllm-{self.port}.log").open("ab")
        command = server_command(self.port, self.served_model_name, self.model, self.extra)
        self.process = subprocess.Popen(
            command, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def healthy(self) -> bool:
        try:
            return get(f"http://127.0.0.1:{self.port}/health", timeout=2)[0] == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.healthy():
            assert self.process is not None and self.process.poll() is None, (
                f"the vLLM server on {self.port} exited; see {self.log_dir}"
            )
            assert time.monotonic() < deadline, f"the vLLM server on {self.port} did not start"
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its engine process, as a lost node would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str) -> float:
        """The sum of one Prometheus metric of the server (e.g. vllm:request_success_total)."""
        _, text = get(f"http://127.0.0.1:{self.port}/metrics")
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        ]
        return sum(values)


def start_all(servers: list[VLLMServer]) -> None:
    """Start the servers that are not answering, together, and wait for all of them."""
    stopped = [s for s in servers if not s.healthy()]
    for server in stopped:
        server.kill()
        server.start()
    for server in stopped:
        server.wait_ready()


class FailingServer:
    url: str
    posts: int = 0

    def __init__(self) -> None:
        self.bodies: list[dict] = []  # every POST body received


@contextmanager
def failing_server(backend: VLLMServer, status: int = 503) -> Iterator[FailingServer]:
    """A stand-in that passes health and model checks to ``backend``, records every POST body
    and answers it ``status``: for checking what this project sends."""
    failing = FailingServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, text = get(f"http://127.0.0.1:{backend.port}{self.path}")
            self._send(code, text.encode())

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with lock:
                failing.posts += 1
                failing.bodies.append(body)
            error = {
                "error": {"message": "engine overloaded", "type": "server_error", "code": status}
            }
            self._send(status, json.dumps(error).encode())

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    failing.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield failing
    finally:
        server.shutdown()
        server.server_close()
