"""The layering of the packages and the one home of the storage layout, checked over the source.

Imports run one way: ``resources`` (the engine, the storage, the layout) knows nothing of the
assets or the sensors; ``batch_assets`` knows nothing of the sensors; the storage backends do
not import the facade that builds them; sensors take the layout's keys and tags from
``resources.layout``, not from asset modules. And no storage key, prefix or run tag is spelled
anywhere but ``resources/layout.py``, so the folder, S3, the sensors, the CLI and the HTTP API
cannot drift apart.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("resources", "batch_assets", "sensors", "batch_api", "benchmarks")
LAYOUT = ROOT / "resources" / "layout.py"


def _sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _offences(packages: tuple[str, ...], forbidden) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(*packages)
        for line, module in _imports(path)
        if forbidden(path, module)
    ]


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


# What each package may import from the project, lowest first: imports run one way, with no
# exemption for any file. The stages of a batch import the ones before them (input <-
# inference <- results), the jobs every stage, the sensors and the API only what they need.
_STAGES = ("batch_assets.partitions", "batch_assets.lifecycle")
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "resources": ("resources",),
    "batch_assets.partitions": ("resources",),
    "batch_assets.lifecycle": ("resources", "batch_assets.lifecycle"),
    "batch_assets.input": ("resources", *_STAGES, "batch_assets.input"),
    "batch_assets.inference": (
        "resources",
        *_STAGES,
        "batch_assets.input",
        "batch_assets.inference",
    ),
    "batch_assets.results": (
        "resources",
        *_STAGES,
        "batch_assets.input",
        "batch_assets.inference",
        "batch_assets.results",
    ),
    "batch_assets.jobs": (
        "resources",
        *_STAGES,
        "batch_assets.input",
        "batch_assets.inference",
        "batch_assets.results",
    ),
    # The API holds no Dagster definitions: it reads and writes the storage and the records.
    "batch_api": ("resources", "batch_assets.lifecycle", "batch_api"),
    # Sensors launch the jobs and read the records; they take no asset module's innards.
    "sensors": ("resources", *_STAGES, "batch_assets.jobs", "sensors"),
    # The code location puts the assets, the jobs and the sensors together.
    "batch_assets.definitions": ("resources", "batch_assets", "sensors"),
    # The command line: the runner, and the API's server (batch-infer serve); never the code
    # location, so that `batch-infer status` and `list` load no sensors or assets.
    "batch_assets.cli": (
        "resources",
        *_STAGES,
        "batch_assets.input",
        "batch_assets.inference",
        "batch_assets.results",
        "batch_assets.jobs",
        "batch_assets.cli",
        "batch_api",
    ),
}
PROJECT = ("resources", "batch_assets", "sensors", "batch_api")


def _package_of(path: Path) -> str:
    """The entry of MAY_IMPORT that ``path`` belongs to (the longest that holds it)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    owners = [p for p in MAY_IMPORT if _under(module, p)]
    assert owners, f"{path.relative_to(ROOT)} belongs to no package of MAY_IMPORT"
    return max(owners, key=len)


def _layered(path: Path) -> bool:
    """Every module but the top package's marker (``batch_assets/__init__.py``)."""
    return path != ROOT / "batch_assets" / "__init__.py"


def test_every_module_belongs_to_a_layer():
    for path in filter(_layered, _sources(*PROJECT)):
        _package_of(path)


def test_imports_run_one_way():
    offences = [
        f"{path.relative_to(ROOT)}:{line} ({package}) imports {module}"
        for path in filter(_layered, _sources(*PROJECT))
        for package in [_package_of(path)]
        for line, module in _imports(path)
        if _under(module, *PROJECT) and not _under(module, *MAY_IMPORT[package])
    ]
    assert offences == []


def test_the_layering_test_sees_an_offence():
    """Not vacuous: an import against the direction is found."""
    path = ROOT / "resources" / "storage.py"
    package = _package_of(path)
    assert not _under("batch_assets.lifecycle.batches", *MAY_IMPORT[package])
    assert _package_of(ROOT / "batch_assets" / "cli" / "main.py") == "batch_assets.cli"


def test_storage_backends_do_not_import_the_storage_facade():
    backends = {"local_backend.py", "s3_backend.py", "storage_base.py", "layout.py"}
    offences = _offences(
        ("resources",), lambda p, m: p.name in backends and m == "resources.storage"
    )
    assert offences == []


# What a layout literal looks like: a storage key or prefix, or one of the project's run tags.
_TOP_LEVEL = {"inbox", "outbox", "work", "files", "events", "index", ".dagster", "inbox/overnight"}
_SEGMENTS = {
    "inbox",
    "outbox",
    "work",
    "cancel",
    "overnight",
    "queue",
    "journal",
    "line_errors",
    "requests",
    "logs",
    "output.jsonl",
    "errors.jsonl",
    "batch.json",
    "preview.jsonl",
    "manifest.json",
    "source.json",
    "files",
    "file.json",
    "content",
    "readers",
    "idempotency",
    "throughput",
    "events",
    "counts.json",
    "output_retention.json",
}
_TAG = re.compile(r"(batch|dagster)/[a-z_]+")


def is_layout_literal(text: str) -> bool:
    if text in _TOP_LEVEL or _TAG.fullmatch(text):
        return True
    if "/" not in text or " " in text or text.startswith("/v1/"):
        return False
    return any(part in _SEGMENTS for part in text.split("/"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inbox", True),
        ("outbox/", True),
        ("/output.jsonl", True),
        ("work/queue/overnight", True),
        ("batch/slot_end", True),
        ("dagster/partition", True),
        ("cancel/", True),
        ("output.jsonl, errors.jsonl and batch.json in the outbox", False),
        ("/v1/chat/completions", False),
        ("requests", False),
        ("cancel", False),  # also the name of a CLI command
    ],
)
def test_the_literal_detector(text, expected):
    assert is_layout_literal(text) is expected


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string constant in ``path`` (f-string parts included), but docstrings and dict keys.

    A dict key names a field (``metadata.outbox``), not a place in the storage.
    """
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            skipped.update(id(key) for key in node.keys if key is not None)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                skipped.add(id(value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skipped
    ]


def test_no_layout_literal_outside_the_layout_module():
    offences = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _sources(*PACKAGES)
        if path != LAYOUT
        for line, text in _string_constants(path)
        if is_layout_literal(text)
    ]
    assert offences == []


def test_the_layout_module_spells_the_layout():
    """The detector is not vacuous: it finds the layout where it does live."""
    found = {text for _, text in _string_constants(LAYOUT) if is_layout_literal(text)}
    assert {"inbox", "outbox", "batch/slot_end", "/batch.json", ".dagster"} <= found


# The batch lifecycle's one owner: the only module that spells a status or touches batch.json.
LIFECYCLE = ROOT / "batch_assets" / "lifecycle" / "batches.py"
PRODUCT = ("resources", "batch_assets", "sensors", "batch_api")
STATUSES = {
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
}


def test_no_status_literal_outside_the_lifecycle():
    offences = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _sources(*PRODUCT)
        if path != LIFECYCLE
        for line, text in _string_constants(path)
        if text in STATUSES
    ]
    assert offences == []


def test_the_lifecycle_spells_every_status():
    found = {text for _, text in _string_constants(LIFECYCLE)}
    assert found >= STATUSES


def _attributes(path: Path, name: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == name
    ]


def test_only_the_lifecycle_touches_batch_json():
    """Reading or writing batch.json goes through the lifecycle's functions."""
    offences = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources(*PRODUCT, "benchmarks")
        if path not in (LIFECYCLE, LAYOUT)
        for line in _attributes(path, "batch_json")
    ]
    assert offences == []
    assert _attributes(LIFECYCLE, "batch_json")
