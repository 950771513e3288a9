"""``batch-infer serve``: the HTTP API on uvicorn, over the storage Dagster uses."""

import ipaddress
import socket

import uvicorn

from batch_api.app import APISettings, create_app
from batch_api.keys import KeyRing
from resources.storage import BatchStorage


class ServeRefused(ValueError):
    """A configuration the server refuses to start with; the message says why."""


def _is_loopback(host: str) -> bool:
    try:
        return all(
            ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
        )
    except (OSError, ValueError):
        return False


def check_settings(storage: BatchStorage, keys: KeyRing, host: str) -> None:
    """Refuse what would serve the wrong people: an open port without keys, unknown projects."""
    if keys.empty:
        if not _is_loopback(host):
            raise ServeRefused(
                f"refusing to serve {host} without API keys: set BATCH_API_KEYS (or "
                "BATCH_API_KEYS_FILE), or bind 127.0.0.1"
            )
        if storage.projects:
            raise ServeRefused(
                "the storage is split into projects (BATCH_PROJECTS): set BATCH_API_KEYS "
                "as PROJECT:KEY entries so that each key reaches its project"
            )
        return
    for _, project in keys.entries:
        if project is None and storage.projects:
            raise ServeRefused("a key without a project, but the storage has projects")
        if project is not None and project not in storage.projects:
            raise ServeRefused(
                f"a key belongs to project {project!r}, which BATCH_PROJECTS does not list"
            )


def serve(storage: BatchStorage, host: str, port: int, max_file_bytes: int) -> None:
    keys = KeyRing.from_env()
    check_settings(storage, keys, host)
    app = create_app(APISettings(storage=storage, keys=keys, max_file_bytes=max_file_bytes))
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
