"""kill -9 of the batch process at points in each stage, then a rerun, on the real engine.

After the rerun, the result files hold each custom_id exactly once and nothing is missing; a
killed run never leaves a result file half-written; and the rerun computes only what the
journal lacks (the journal reaches the OS after every engine step, so only the requests in
the engine at the kill are computed again).
"""

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resources.journal import JournalIndex
from resources.storage import BatchStorage
from tests.conftest import (
    MODEL_NAME,
    ROOT,
    chat_body,
    chat_requests,
    read_jsonl,
    request_ids,
    request_line,
)

pytestmark = pytest.mark.slow


def _cli(upload: Path, storage: Path, model: Path) -> subprocess.Popen:
    command = [str(ROOT / ".venv" / "bin" / "batch-infer"), "run", str(upload)]
    command += ["--storage", str(storage), "--model", str(model)]
    command += ["--served-model-name", MODEL_NAME, "--max-model-len", "512"]
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill_when(process: subprocess.Popen, reached: Callable[[], bool], what: str) -> None:
    """SIGKILL the process group the moment ``reached()`` holds."""
    deadline = time.monotonic() + 600
    while not reached():
        assert process.poll() is None, f"the run ended before {what}:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _journal_lines(root: Path) -> int:
    """Complete journal records on disk now (a torn last line is not a record)."""
    return sum(path.read_bytes().count(b"\n") for path in root.glob("work/*/journal/*.tsv"))


def _mostly_invalid(path: Path, valid: int, invalid: int) -> set[str]:
    """A long file whose lines are cheap to answer: a few requests, many rejected lines."""
    with path.open("w") as out:
        for i in range(valid):
            out.write(request_line(f"ok{i}", chat_body(f"n {i}", max_tokens=2)) + "\n")
        for i in range(invalid):
            out.write(request_line(f"bad{i}", chat_body(model="not-served")) + "\n")
    return {f"ok{i}" for i in range(valid)} | {f"bad{i}" for i in range(invalid)}


def _finish_and_check(upload: Path, storage: Path, model: Path, ids: set[str]) -> Path:
    rerun = _cli(upload, storage, model)
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out[-3000:]
    printed = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert printed["status"] == "completed"
    results = read_jsonl(Path(printed["output"])) + read_jsonl(Path(printed["errors"]))
    custom_ids = [line["custom_id"] for line in results]
    assert len(custom_ids) == len(ids) and set(custom_ids) == ids  # each exactly once
    return storage / "work" / printed["batch_id"]


def test_kill_during_validation(tmp_path, tiny_model):
    upload, storage = tmp_path / "big.jsonl", tmp_path / "data"
    ids = _mostly_invalid(upload, valid=50, invalid=150_000)
    run = _cli(upload, storage, tiny_model)
    _kill_when(
        run,
        lambda: any(storage.glob("work/*/line_errors/part-*.parquet")),
        "validation had written its first chunk",
    )
    assert not any(storage.glob("work/*/manifest.json"))  # killed mid-validation
    _finish_and_check(upload, storage, tiny_model, ids)


def test_kill_mid_inference_recomputes_only_what_the_journal_lacks(tmp_path, tiny_model):
    upload, storage = tmp_path / "chat.jsonl", tmp_path / "data"
    total = 2000
    upload.write_text(chat_requests("c", total, max_tokens=64))
    kill_at = random.Random(os.getpid()).randint(100, 1200)
    run = _cli(upload, storage, tiny_model)
    _kill_when(run, lambda: _journal_lines(storage) >= kill_at, f"{kill_at} journaled answers")
    assert not any(storage.glob("outbox/*/output.jsonl"))
    survived = _journal_lines(storage)
    assert survived >= kill_at  # nothing journaled before the kill was lost

    work = _finish_and_check(upload, storage, tiny_model, set(request_ids("c", total)))
    segments = sorted((work / "journal").glob("*.tsv"))
    assert len(segments) == 2
    per_attempt = [
        {int(raw.split(b"\t", 1)[0]) for raw in path.read_bytes().splitlines(keepends=True)}
        for path in segments
    ]
    assert not per_attempt[0] & per_attempt[1]  # no request computed twice and kept twice
    assert len(per_attempt[1]) == total - survived  # the rerun ran only the rest
    with JournalIndex(BatchStorage(root=str(storage)), f"work/{work.name}/journal") as index:
        assert len(index) == total


def test_kill_while_publishing_leaves_no_half_written_file(tmp_path, tiny_model):
    upload, storage = tmp_path / "big.jsonl", tmp_path / "data"
    ids = _mostly_invalid(upload, valid=50, invalid=150_000)
    run = _cli(upload, storage, tiny_model)
    _kill_when(
        run, lambda: any(storage.glob(".tmp/.errors.jsonl.*")), "errors.jsonl was half written"
    )
    assert not any(storage.glob("outbox/*/errors.jsonl"))
    assert not any(storage.glob("outbox/*/output.jsonl"))
    leftovers = list(storage.glob(".tmp/*"))  # the killed writer's spool files stay ...
    assert leftovers
    day_old = time.time() - 25 * 3600
    for leftover in leftovers:
        os.utime(leftover, (day_old, day_old))
    _finish_and_check(upload, storage, tiny_model, ids)
    assert not any(storage.glob(".tmp/*"))  # ... until a later run sweeps them once they are stale
