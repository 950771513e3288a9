"""`batch-infer run`: the one-shot command the README's main command uses."""

import os
import subprocess
from pathlib import Path

import pytest

from batch_assets.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_batch_exits_non_zero_with_the_reason(tmp_path, capsys, tiny_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code = main(["run", str(empty), "--storage", str(tmp_path / "s"), "--model", str(tiny_model)])
    captured = capsys.readouterr()
    assert code == 1
    assert "status: failed" in captured.out
    assert "empty_file: the file is empty" in captured.err


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "nope.jsonl")])
    assert exited.value.code == 2


@pytest.mark.slow
def test_the_readme_main_command_runs_the_example_and_resumes(tmp_path, tiny_model):
    command = [
        str(ROOT / ".venv" / "bin" / "batch-infer"),
        "run",
        str(ROOT / "examples" / "requests.jsonl"),
        "--storage",
        str(tmp_path / "data"),
        "--model",
        str(tiny_model),
        "--served-model-name",
        "tiny-chat",
    ]
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    printed = dict(line.split(": ", 1) for line in first.stdout.splitlines() if ": " in line)
    assert printed["status"] == "completed"
    for name in ("output", "errors", "batch"):
        assert Path(printed[name]).is_file()
    published = Path(printed["output"]).stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0
    assert f"batch_id: {printed['batch_id']}" in second.stdout
    # a finished batch is not computed or published again
    journal = tmp_path / "data" / "work" / printed["batch_id"] / "journal"
    assert len(list(journal.glob("*.tsv"))) == 1
    assert Path(printed["output"]).stat().st_mtime_ns == published
