"""The HTTP API on a real uvicorn server in this process (a thread), for the SDK to talk to."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from batch_api.app import APISettings, create_app
from batch_api.keys import KeyRing
from resources.storage import BatchStorage
from tests.seaweedfs import free_port


@contextmanager
def api_server(
    storage: BatchStorage, keys: str = "", max_file_bytes: int = 8 << 30
) -> Iterator[str]:
    """Serve the API over ``storage`` on a free loopback port; yields the SDK's base URL."""
    settings = APISettings(storage=storage, keys=KeyRing.parse(keys), max_file_bytes=max_file_bytes)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
