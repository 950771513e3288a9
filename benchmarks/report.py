"""The results as a markdown file, PNG charts and a JSON-lines file of every record."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import SIDES, Measurement
from benchmarks.memory import TARGET_GROWTH, TARGET_LINES_PER_S, TARGET_PEAK_RSS_BYTES
from benchmarks.workloads import Workload

GPU_ANCHOR = (
    "Anchor: Llama-3.1-8B FP8 on one H100, vLLM 0.10: 5,777 output tok/s offline "
    "(MLPerf Inference v5.1). Our GPU model is a bf16 Llama-3-8B shape with dummy weights, "
    "so compare orders of magnitude, not digits."
)
SCOPES = (
    "**phase, in memory**: timed inside one process on one already-started engine object; "
    "(1) gets its requests as Python objects, (2) reads them from the parquet shards "
    "`validate_input` wrote and journals every answer; the harness's own objects are frozen "
    "out of Python's garbage collector after the warm-up, for both sides alike. "
    "**whole process**: wall time of the command from start to exit: imports, engine start, "
    "reading the file, inference, writing results. "
    "**phase, from the run**: the `batch_inference` asset's own `inference_wall_s` from that "
    "run's Dagster metadata; **phase, ~1 s**: run_batch's progress bar (whole seconds). "
    "**loop only, sample**: the first N requests, one at a time, to an already-started server. "
    "**ratio to raw** = requests/s of the row / requests/s of (1) on the full workload."
)


@dataclass
class WorkloadReport:
    """One workload's settings, engine facts, side summaries and failures."""

    workload: Workload
    settings: dict[str, Any]
    engine: dict[str, Any] = field(default_factory=dict)
    ordering: dict[str, Any] = field(default_factory=dict)
    summaries: list[Measurement] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds_spent: float = 0.0


@dataclass
class SuiteReport:
    """The whole run: machine, command, every workload, the memory benchmark, notes."""

    info: dict[str, Any]
    command: str
    gpu: bool
    workloads: list[WorkloadReport] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    total_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _n(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):,.0f} MiB"


def _side_table(report: WorkloadReport) -> list[str]:
    rows = [
        "| side | measures | requests | seconds | requests/s | output tok/s | ratio to raw |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = list(SIDES)
    for m in sorted(report.summaries, key=lambda m: order.index(m.side)):
        requests = f"{m.requests:,}"
        if m.side == "naive":
            requests += f" (first {m.requests:,} of {report.workload.requests:,})"
        runs = f", median of {m.runs}" if m.runs > 1 else ""
        ratio = "1.00" if m.side == "raw" else _n(m.ratio_to_raw, 2)
        tokens = _n(m.output_tokens_per_s, 0) if m.output_tokens else "-"
        rows.append(
            f"| {m.label} | {m.scope}{runs} | {requests} | {_n(m.seconds, 2)} | "
            f"{_n(m.requests_per_s)} | {tokens} | {ratio} |"
        )
    for side, error in report.failures.items():
        rows.append(f"| {SIDES.get(side, (side,))[0]} | FAILED: {error[:160]} | | | | | |")
    return rows


def _prefix_table(report: WorkloadReport) -> list[str]:
    by_side = {m.side: m for m in report.summaries}
    off = by_side.get("phase_unordered")
    rows = [
        "| variant | requests/s | cached prompt tokens | cached share | adjacent requests "
        "sharing the system prompt | gain vs ordering off |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    variants = (
        ("raw", "(1) raw `LLM.chat`, input order", "input"),
        ("raw_grouped", "(1') raw `LLM.chat`, grouped by system prompt", None),
        ("phase_unordered", "(2') inference phase, ordering off", "phase_unordered"),
        ("phase", "(2) inference phase, ordering on (default)", "phase"),
    )
    for side, label, order_key in variants:
        m = by_side.get(side)
        if m is None:
            continue
        share = m.cached_tokens / m.prompt_tokens if m.prompt_tokens else 0.0
        ordering = report.ordering.get(order_key) if order_key else None
        adjacency = (ordering or {}).get("adjacent_same_prefix")
        if side == "raw_grouped":
            adjacency = None
        gain = m.requests_per_s / off.requests_per_s if off and side.startswith("phase") else None
        rows.append(
            f"| {label} | {_n(m.requests_per_s)} | {m.cached_tokens:,} | {share:.1%} | "
            f"{'-' if adjacency is None else f'{adjacency:.1%}'} | {_n(gain, 2)} |"
        )
    return rows


def _engine_table(reports: list[WorkloadReport]) -> list[str]:
    rows = [
        "| workload | KV cache asked | KV tokens (1)(2) | KV tokens (3) / (4) / (5) | block "
        "| max seqs | batched tokens | prefix caching | dtype | eager | engine in-process |",
        "|---|---|---:|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in reports:
        e, s = r.engine, r.settings
        others = {m.side: (m.extra or {}).get("kv_tokens") for m in r.summaries}
        sub = " / ".join(
            _n(others.get(k), 0) if others.get(k) else "-" for k in ("e2e", "run_batch", "naive")
        )
        rows.append(
            f"| {r.workload.name} | {_mib(s.get('kv_cache_memory_bytes'))} | "
            f"{_n(e.get('kv_tokens'), 0)} | {sub} | {e.get('block_size', '-')} | "
            f"{e.get('max_num_seqs', s.get('max_num_seqs'))} | "
            f"{e.get('max_num_batched_tokens', s.get('max_num_batched_tokens'))} | "
            f"{e.get('enable_prefix_caching', '-')} | {e.get('dtype', s.get('dtype'))} | "
            f"{e.get('enforce_eager', s.get('enforce_eager'))} | {e.get('in_process', '-')} |"
        )
    return rows


def _memory_table(memory: dict[str, Any]) -> list[str]:
    rows = [
        "| lines | file MB | seconds | lines/s | peak RSS MB | RSS after imports MB | shards |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in memory["runs"]:
        rows.append(
            f"| {m['lines']:,} | {m['bytes'] / 1e6:,.1f} | {m['seconds']:.2f} | "
            f"{m['lines_per_s']:,} | {m['peak_rss_bytes'] / 1e6:,.0f} | "
            f"{m['rss_after_imports_bytes'] / 1e6:,.0f} | {m['shards']} |"
        )
    v = memory["verdict"]
    ok = {True: "met", False: "**missed**"}
    rows += [
        "",
        f"- Targets for the {memory['runs'][-1]['lines']:,}-line file: "
        f"{TARGET_LINES_PER_S:,} lines/s on one core: {ok[v['lines_per_s_ok']]}; "
        f"peak RSS under {TARGET_PEAK_RSS_BYTES / 1e6:.0f} MB: {ok[v['peak_rss_ok']]}; "
        f"within {TARGET_GROWTH - 1:.0%} of the {memory['runs'][0]['lines']:,}-line figure: "
        f"x{v['rss_growth']:.2f}, {ok[v['rss_growth_ok']]}.",
        f"- One fresh process per file, `POLARS_MAX_THREADS=1`, "
        f"{'`taskset -c 0`' if memory['runs'][0].get('pinned_to_one_core') else 'not pinned'};"
        " peak RSS is the process's own `ru_maxrss` (imports included).",
    ]
    if memory.get("note"):
        rows.append(f"- {memory['note']}")
    return rows


def _header(suite: SuiteReport) -> list[str]:
    """Title, command, machine, versions, what the scopes mean, suite notes."""
    info = suite.info
    gpus = ", ".join(info["gpus"]) or "none"
    lines = [
        f"# Benchmarks: {info['date']}, {'GPU' if suite.gpu else 'CPU'} mode",
        "",
        f"- Command: `{suite.command}`",
        f"- Machine: {info['cpu']}, {info['cores_available']} cores available "
        f"({info['cores_logical']} logical), {info['ram_gib']} GiB RAM, GPU: {gpus}",
        f"- Versions: {info['vllm_package']} {info['vllm']}, torch {info['torch']}, "
        f"Python {info['python']}, dagster {info['dagster']}, polars {info['polars']}",
        f"- Suite wall time: {suite.total_s / 60:,.1f} min",
        "",
        SCOPES,
        "",
    ]
    if suite.gpu:
        lines += [GPU_ANCHOR, ""]
    return lines + [f"- {note}" for note in suite.notes]


def _settings_section(reports: list[WorkloadReport]) -> list[str]:
    lines = ["", "## Engine settings", "", *_engine_table(reports), ""]
    if reports:
        s = reports[0].settings
        lines += [
            f"Common to all workloads and sides: model `{s['model']}` (served as "
            f"`{s['served_model_name']}`), max_model_len {s['max_model_len']}, seed {s['seed']}, "
            f"dtype {s['dtype']}, load_format {s['load_format']}, gpu_memory_utilization "
            f"{s['gpu_memory_utilization']}. Scheduler limits are passed explicitly to every "
            "side (vLLM's defaults differ between `LLM` and `run_batch`). KV tokens are what "
            "each engine reported.",
            "",
        ]
    return lines


def _workload_section(r: WorkloadReport) -> list[str]:
    w = r.workload
    lines = [f"## {w.title} (`{w.name}`)", ""]
    lines += [f"- {note}" for note in w.notes]
    lines += [f"- Time spent on this workload: {r.seconds_spent / 60:,.1f} min", ""]
    lines += [*_side_table(r), ""]
    if w.prefix_compare:
        lines += ["### Prefix-aware ordering", "", *_prefix_table(r), ""]
    return lines


def write_markdown(path: Path, suite: SuiteReport, charts: list[Path]) -> None:
    """The report: header, engine settings, one section per workload, memory, charts."""
    lines = [*_header(suite), *_settings_section(suite.workloads)]
    for r in suite.workloads:
        lines += _workload_section(r)
    if suite.memory:
        lines += ["## Validation: memory and speed (one core)", "", *_memory_table(suite.memory)]
        lines.append("")
    if charts:
        lines += ["## Charts", "", *(f"![{c.stem}]({c.name})" for c in charts), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def write_ratio_chart(path: Path, suite: SuiteReport) -> Path | None:
    """One horizontal bar chart per workload: requests/s of each side over raw's."""
    reports = [r for r in suite.workloads if any(m.ratio_to_raw for m in r.summaries)]
    if not reports:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(SIDES)
    heights = [max(1, len(r.summaries)) for r in reports]
    fig, axes = plt.subplots(
        len(reports),
        1,
        figsize=(9, 1.2 + 0.42 * sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, r in zip(axes[:, 0], reports, strict=True):
        items = sorted(r.summaries, key=lambda m: order.index(m.side), reverse=True)
        labels = [f"{m.side} ({m.scope})" for m in items]
        values = [m.ratio_to_raw or 0.0 for m in items]
        bars = ax.barh(labels, values, color=[_colour(m.scope) for m in items])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
        ax.set_title(f"{r.workload.title}: requests/s relative to raw vLLM", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max([*values, 1.0]) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colour(scope: str) -> str:
    if scope.startswith("whole"):
        return "#d98c3f"
    if scope.startswith("loop"):
        return "#b04a4a"
    return "#3f7fbf"


def write_memory_chart(path: Path, memory: dict[str, Any]) -> Path:
    """Peak RSS and lines/s of the two files, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = memory["runs"]
    labels = [f"{m['lines']:,} lines" for m in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    rss = [m["peak_rss_bytes"] / 1e6 for m in runs]
    left.bar(labels, rss, color="#3f7fbf")
    left.axhline(TARGET_PEAK_RSS_BYTES / 1e6, color="red", linestyle="--", label="500 MB target")
    left.set_title("peak RSS of the validating process (MB)", fontsize=10)
    left.legend(fontsize=8)
    rate = [m["lines_per_s"] for m in runs]
    right.bar(labels, rate, color="#d98c3f")
    right.axhline(TARGET_LINES_PER_S, color="red", linestyle="--", label="150k lines/s target")
    right.set_title("validation + sharding, lines/s on one core", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))


def write_all(out: Path, suite: SuiteReport, records: list[dict[str, Any]]) -> None:
    """``out`` (markdown), its charts ``-ratios.png`` and ``-memory.png`` and ``.jsonl``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = [write_ratio_chart(out.with_name(out.stem + "-ratios.png"), suite)]
    if suite.memory:
        charts.append(write_memory_chart(out.with_name(out.stem + "-memory.png"), suite.memory))
    write_markdown(out, suite, [c for c in charts if c is not None])
    write_records(out.with_suffix(".jsonl"), records)
