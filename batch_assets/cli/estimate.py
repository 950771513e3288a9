"""``batch-infer estimate FILE``: what a file will cost before it runs, and for how long.

The file goes through the validation a batch's input step runs (the same limits, the same
counts of good and bad lines) into a scratch folder that is removed afterwards, with each
valid line's tokens counted by the model's tokenizer and chat template. No engine is loaded.
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from batch_assets.input.asset import InputLimits
from batch_assets.input.estimate import LineEstimator, estimate_lines, eta_of
from batch_assets.input.validation import FileRejected, Limits, ValidationReport, validate_input
from batch_assets.lifecycle.throughput import read_runs
from resources.engines.base import BatchEngine
from resources.layout import BatchPaths
from resources.storage import BatchStorage


def estimate_file(file: Path, engine: BatchEngine) -> ValidationReport:
    """Validate and count ``file`` as the input step would (raises :class:`FileRejected`)."""
    defaults = InputLimits()
    limits = Limits(defaults.max_line_bytes, defaults.max_lines, defaults.max_file_bytes)
    with tempfile.TemporaryDirectory(prefix="batch-estimate-") as scratch:
        storage = BatchStorage(root=scratch)
        key = f"input/{file.name}"  # its name tells a gzip file
        storage.put_file(file, key)
        estimator = LineEstimator(engine.tokenizer_folder, engine.context_length)
        return validate_input(
            storage,
            key,
            BatchPaths("estimate"),
            engine.model_names,
            limits,
            None,
            estimator,
        )


def print_estimate(args: argparse.Namespace, storage: BatchStorage, engine: BatchEngine) -> int:
    """Print the estimate of ``args.file``; 1 when the file would fail its batch."""
    model = engine.served_model_names[0]
    try:
        report = estimate_file(args.file, engine)
    except FileRejected as rejected:
        if args.json:
            print(json.dumps({"file": str(args.file), "rejected": rejected.message}))
        else:
            print(f"{args.file}: the batch would fail: {rejected.message}")
        return 1
    runs = read_runs(storage.for_project(args.project), model)
    if args.json:
        print(json.dumps(_as_json(args.file, report, runs, model), indent=2))
        return 0
    codes = ", ".join(f"{code} {n}" for code, n in sorted(report.error_codes.items()))
    lines = [
        f"{args.file}: {report.valid:,} requests to {report.endpoint} for {model}",
        f"invalid lines: {report.invalid:,}" + (f" ({codes})" if codes else ""),
        *estimate_lines(report.estimate, report.valid, runs, model),
    ]
    print("\n".join(lines))
    return 0


def _as_json(file: Path, report: ValidationReport, runs: list, model: str) -> dict[str, Any]:
    eta = eta_of(report.estimate, report.valid, runs)
    return {
        "file": str(file),
        "model": model,
        "endpoint": report.endpoint,
        "requests": report.valid,
        "invalid": report.invalid,
        "error_codes": report.error_codes,
        "estimate": msgspec.to_builtins(report.estimate),
        "eta": None
        if eta is None
        else {
            "seconds": round(eta.by_requests_s, 1),
            "at_most_seconds": None if eta.at_most_s is None else round(eta.at_most_s, 1),
            "requests_per_s": round(eta.requests_per_s, 3),
            "tokens_per_s": round(eta.tokens_per_s, 1),
            "runs": eta.runs,
        },
    }
