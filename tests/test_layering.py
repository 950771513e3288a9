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
PACKAGES = ("resources", "batch_assets", "sensors", "api", "benchmarks")
LAYOUT = ROOT / "resources" / "layout.py"
# Modules of batch_assets that define assets: sensors may name their jobs, not their innards.
ASSET_MODULES = {
    "batch_assets.input_file",
    "batch_assets.inference_run",
    "batch_assets.result_files",
    "batch_assets.preview",
}


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


def test_resources_import_neither_assets_nor_sensors():
    assert _offences(("resources",), lambda _, m: _under(m, "batch_assets", "sensors")) == []


def test_nothing_below_the_api_imports_it():
    """Only the CLI's ``serve`` command starts the API (lazily)."""
    offences = _offences(
        ("resources", "batch_assets", "sensors"),
        lambda p, m: p.name != "cli.py" and _under(m, "api"),
    )
    assert offences == []


def test_the_api_loads_neither_the_sensors_nor_the_assets():
    """A replica of the API holds no Dagster definitions: it reads and writes the storage."""
    heavy = ("sensors", "batch_assets.definitions", "batch_assets.jobs", *ASSET_MODULES)
    assert _offences(("api",), lambda _, m: _under(m, *heavy)) == []


def test_assets_do_not_import_sensors():
    """Only the code location module, which puts assets and sensors together, imports both."""
    offences = _offences(
        ("batch_assets",), lambda p, m: p.name != "definitions.py" and _under(m, "sensors")
    )
    assert offences == []


def test_storage_backends_do_not_import_the_storage_facade():
    backends = {"local_backend.py", "s3_backend.py", "storage_base.py", "layout.py"}
    offences = _offences(
        ("resources",), lambda p, m: p.name in backends and m == "resources.storage"
    )
    assert offences == []


def test_sensors_take_no_constants_from_asset_modules():
    assert _offences(("sensors",), lambda _, m: m in ASSET_MODULES) == []


def test_the_cli_does_not_load_the_code_location():
    """``batch-infer status`` and ``list`` need no sensors, schedules or assets loaded."""
    offences = _offences(
        ("batch_assets",),
        lambda p, m: (
            p.name in ("cli.py", "cli_display.py", "engine_flags.py")
            and (m == "batch_assets.definitions" or _under(m, "sensors"))
        ),
    )
    assert offences == []


# What a layout literal looks like: a storage key or prefix, or one of the project's run tags.
_TOP_LEVEL = {"inbox", "outbox", "work", "files", ".dagster", "inbox/overnight"}
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
