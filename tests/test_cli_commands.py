"""The CLI a newcomer meets: engine flags from the resource, progress, quiet logs, status, list."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from openai.types import Batch

from batch_assets.cli.display import ProgressDisplay, logs_to_file
from batch_assets.cli.engine_flags import NOT_FLAGS, engine_flags, engine_from_args, flag_of
from batch_assets.cli.main import build_parser, main
from batch_assets.lifecycle.batches import RequestCounts, record_live_counts, register_batch
from resources.engines.config import engine_from_env
from resources.engines.pool import VLLMServerPool
from resources.engines.progress import Progress
from resources.engines.vllm_engine import VLLMEngine
from resources.storage import BatchStorage
from resources.webhooks import WebhookSender
from sensors.webhooks import deliver_due
from tests.conftest import MODEL_NAME, ROOT, chat_requests, drive, request_ids
from tests.webhook_receiver import Receiver, new_secret

BATCH_INFER = str(ROOT / ".venv" / "bin" / "batch-infer")


def _help(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batch_assets.cli.main", *command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_engine_field_is_a_run_flag_with_its_description():
    text = " ".join(_help("run").split())  # argparse wraps help text
    for name, field in {**VLLMEngine.model_fields, **VLLMServerPool.model_fields}.items():
        flag = flag_of(name)
        if name in NOT_FLAGS:
            assert flag not in text
            continue
        assert flag in text, name
        assert " ".join((field.description or "").split()[:4]) in text, name
    assert "exit codes:" in text


def test_cancel_takes_no_engine_flags(capsys):
    assert "--max-num-seqs" not in _help("cancel")
    with pytest.raises(SystemExit) as exited:
        main(["cancel", "batch_x", "--max-num-seqs", "4"])
    assert exited.value.code == 2


def test_engine_flags_round_trip_through_the_parser():
    shared = {"model": "m", "served_model_name": "served", "model_aliases": ["a", "b"]}
    in_process = {
        **shared,
        "max_num_seqs": 7,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "kv_cache_memory_bytes": 1 << 20,
    }
    pool = {
        **shared,
        "engine_urls": ["http://a:8000/v1", "http://b:8000"],
        "priority_scheduling": True,
    }
    for fields, kind in ((in_process, VLLMEngine), (pool, VLLMServerPool)):
        args = build_parser().parse_args(["run", "f.jsonl", *engine_flags(fields)])
        engine = engine_from_args(args)
        assert type(engine) is kind
        assert engine.model_dump(exclude_unset=True) == fields
    untouched = engine_from_args(build_parser().parse_args(["run", "f.jsonl"]))
    assert isinstance(untouched, VLLMEngine)
    assert untouched.enforce_eager is None  # left to the resource's platform default


def test_the_other_modes_flags_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", __file__, "--engine-url", "http://a:1/v1", "--max-model-len", "64"])
    assert exited.value.code == 2
    assert "--max-model-len" in capsys.readouterr().err


def test_engine_url_is_repeatable_and_the_environment_gives_a_comma_list(monkeypatch):
    args = build_parser().parse_args(
        ["run", "f.jsonl", "--engine-url", "http://a:1/v1", "--engine-url", "http://b:2/v1"]
    )
    assert engine_from_args(args).engine_urls == ["http://a:1/v1", "http://b:2/v1"]
    monkeypatch.setenv("BATCH_ENGINE_URLS", " http://a:1/v1, http://b:2 ,")
    monkeypatch.setenv("BATCH_ENGINE_API_KEY", "sk-servers")
    engine = engine_from_env()
    assert isinstance(engine, VLLMServerPool)
    assert engine.engine_urls == ["http://a:1/v1", "http://b:2"]
    # The key stays a reference to the variable: Dagster resolves it when the run starts.
    assert isinstance(engine.engine_api_key, dg.EnvVar)


def test_an_unknown_field_has_no_flag():
    with pytest.raises(ValueError, match="not a field"):
        engine_flags({"max_num_sequences": 4})


def _feed(display: ProgressDisplay, total: int) -> None:
    display.update(Progress("b", "loading", 0, total))
    for done in range(0, total + 1, 10):
        display.update(Progress("b", "running", done, total, 50.0, 800.0))
    display.update(Progress("b", "publishing", total, total))
    display.close()


def test_progress_on_a_terminal_is_one_redrawn_bar():
    stream = io.StringIO()
    _feed(ProgressDisplay(stream, "b", tty=True), 100)
    text = stream.getvalue()
    assert "\r[" in text
    assert "100/100 100%" in text
    bar_lines = [line for line in text.split("\n") if "\r[" in line]
    assert len(bar_lines) == 1  # redrawn in place, not a line per update
    assert text.splitlines()[0] == "validating the input file ..."
    assert text.splitlines()[-1] == "writing the result files ..."


def test_progress_elsewhere_is_plain_periodic_lines():
    stream = io.StringIO()
    _feed(ProgressDisplay(stream, "b", tty=False), 100)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    progress = [line for line in lines if line.startswith("progress: ")]
    # the first update and the last (100%) one; the ones in between fall inside the interval
    assert len(progress) == 2
    assert "100/100 100%" in progress[-1]
    assert "50 req/s" in progress[-1] and "800 tok/s" in progress[-1]


def test_logs_go_to_the_file_and_warnings_still_reach_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with logs_to_file(log) as terminal:
        sys.stdout.write("a print\n")
        os.write(1, b"raw fd 1\n")
        os.write(2, b"raw fd 2\n")
        logging.getLogger("batch-test").warning("a warning")
        logging.getLogger("batch-test").info("an info")
        terminal.write("progress: drawn\n")
    sys.stdout.write("after the block\n")
    text = log.read_text()
    assert "a print" in text and "raw fd 1" in text and "raw fd 2" in text
    shown = capfd.readouterr()
    assert "a print" not in shown.out + shown.err and "raw fd" not in shown.out + shown.err
    assert "WARNING batch-test: a warning" in shown.err
    assert "progress: drawn" in shown.err
    assert "after the block" in shown.out


@pytest.mark.slow
def test_run_is_quiet_then_status_and_list_read_the_batch(tmp_path, tiny_model):
    upload = tmp_path / "requests.jsonl"
    upload.write_text(chat_requests("q", 300))
    storage = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "BATCH_PROJECTS")}
    command = [BATCH_INFER, "run", str(upload), "--storage", str(storage)]
    command += ["--model", str(tiny_model), "--served-model-name", MODEL_NAME]
    run = subprocess.run(
        [*command, "--max-model-len", "512"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    everything = run.stdout + run.stderr
    assert " - dagster - DEBUG - " not in everything  # per-event records stay in the log
    assert "Initializing a V1 LLM engine" not in everything  # so does vLLM's start-up
    assert "progress: " in run.stderr and "300/300 100%" in run.stderr
    printed = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert printed["status"] == "completed"
    assert printed["request_counts"] == "total 300, completed 300, failed 0"
    assert "output tokens" in printed["usage"]
    log = Path(printed["log"])
    assert log.is_relative_to(storage / "work" / printed["batch_id"])
    kept = log.read_text()
    assert "STEP_SUCCESS" in kept and "Initializing a V1 LLM engine" in kept
    assert len(run.stdout.splitlines()) <= 10

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [BATCH_INFER, *args, "--storage", str(storage)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    status = cli("status", printed["batch_id"])
    assert status.returncode == 0, status.stderr
    shown = dict(line.split(": ", 1) for line in status.stdout.splitlines())
    assert shown["status"] == "completed"
    assert shown["output"] == printed["output"]
    assert "completed_at" in shown and "created_at" in shown
    as_json = cli("status", printed["batch_id"], "--json")
    Batch.model_validate_json(as_json.stdout, strict=True)

    listing = cli("list")
    assert listing.returncode == 0
    header, row = listing.stdout.splitlines()
    assert header.split()[:2] == ["BATCH", "ID"]
    assert row.split()[:5] == [printed["batch_id"], "completed", "300", "300", "0"]
    listed = json.loads(cli("list", "--json").stdout)
    assert [Batch.model_validate(b).id for b in listed["data"]] == [printed["batch_id"]]
    assert cli("status", "batch_unknown").returncode == 2
    answers = Path(printed["output"]).read_text()
    assert request_ids("q", 300)[-1] in answers

    # The estimate counted before the run is what the engine reported, and the run's rate
    # gives the next file an ETA.
    used = sum(
        json.loads(line)["response"]["body"]["usage"]["prompt_tokens"]
        for line in answers.splitlines()
    )
    assert shown["prompt tokens"] == f"{used:,} over 300 lines (counted with {tiny_model})"
    model = ["--model", str(tiny_model), "--served-model-name", MODEL_NAME]
    estimate = cli("estimate", str(upload), *model, "--json")
    assert estimate.returncode == 0, estimate.stderr
    figures = json.loads(estimate.stdout)
    assert figures["estimate"]["prompt_tokens"] == used
    assert figures["eta"]["runs"] == 1 and figures["eta"]["seconds"] > 0


def test_list_orders_batches_newest_first_across_projects(tmp_path, capsys, monkeypatch):
    from batch_assets.lifecycle.batches import register_batch, update_batch
    from resources.storage import BatchStorage

    storage = BatchStorage(root=str(tmp_path), projects=["team-a", "team-b"])
    made = []
    for created, project in enumerate(["team-a", "team-b", "team-a"]):
        tenant = storage.for_project(project)
        tenant.write_bytes(f"inbox/f{created}.jsonl", b"{}\n")
        batch_id = register_batch(tenant, f"inbox/f{created}.jsonl")
        update_batch(tenant, batch_id, created_at=1_700_000_000 + created)
        made.append((project, batch_id))
    monkeypatch.setenv("BATCH_PROJECTS", "team-a,team-b")
    assert main(["list", "--storage", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [(b["project"], b["id"]) for b in listed] == made[::-1]
    assert main(["list", "--storage", str(tmp_path), "--project", "team-b", "--json"]) == 0
    only_b = json.loads(capsys.readouterr().out)["data"]
    assert [b["id"] for b in only_b] == [made[1][1]]


def test_status_and_list_show_live_counts_a_rate_an_eta_and_the_webhook(tmp_path, capsys):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    storage.write_bytes("inbox/a.jsonl", chat_requests("a", 1).encode())
    batch_id = register_batch(storage, "inbox/a.jsonl")
    drive(storage, batch_id, "in_progress")
    record_live_counts(storage, batch_id, RequestCounts(100, 40, 2), 10.0)
    assert main(["status", batch_id, "--storage", storage.root]) == 0
    shown = capsys.readouterr().out
    assert "request_counts: total 100, completed 40, failed 2" in shown
    assert "rate: 10.0 req/s" in shown and "eta: 0:00:05" in shown  # 58 left at 10 a second
    assert main(["list", "--storage", storage.root, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["data"]
    assert listed["request_counts"] == {"total": 100, "completed": 40, "failed": 2}

    drive(storage, batch_id, "cancelled")  # in_progress -> cancelling -> cancelled
    hook = Receiver(script=[503])
    try:
        sender = WebhookSender(endpoints=hook.url, secrets=new_secret())
        deliver_due(storage, sender, 0.0)
        assert main(["status", batch_id, "--storage", storage.root]) == 0
        shown = capsys.readouterr().out
        assert "webhook: batch.cancelled evt_" in shown and "pending, 1 attempts" in shown
        assert "last error: HTTP 503" in shown and "rate:" not in shown
    finally:
        hook.close()
