"""The code location loads, with the assets, checks, job and resources a user sees."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from batch_assets.definitions import defs


def test_definitions_load_with_the_batch_graph():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"batch_input", "batch_inference", "batch_results", "batch_preview"}
    assert defs.resolve_job_def("batch_job") is not None
    assert defs.resolve_job_def("preview_job") is not None
    checks = {key.name for key in repo.asset_graph.asset_check_keys}
    assert checks == {"every_line_accounted_for", "no_duplicate_custom_id_in_output"}
    inference = repo.assets_defs_by_key[dg.AssetKey("batch_inference")]
    assert inference.partitions_def.name == "batches"
    assert set(defs.resources) == {"storage", "engine", "webhooks"}
    assert {s.name for s in defs.sensors} == {
        "inbox_sensor",
        "api_batch_sensor",
        "cancel_sensor",
        "terminated_run_sensor",
        "batch_failure_sensor",
        "orphaned_run_sensor",
        "webhook_sensor",
        "retention_sensor",
    }
    assert defs.resolve_job_def("cancel_job") is not None
    schedule = defs.get_schedule_def("overnight_schedule")
    assert schedule.cron_schedule == "0 1 * * *"
    assert schedule.execution_timezone == "UTC"


def test_the_workspace_loads_as_dagster_dev_loads_it():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(root / "workspace.yaml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All code locations passed validation" in result.stdout + result.stderr
