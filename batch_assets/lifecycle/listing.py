"""Lists that cost what their page costs: an index folder of empty objects, one an item.

Each item (a file, a batch) has an entry in an index folder whose name is its sort key, the
newest first: ``<inverted milliseconds>_<id>``. A page is one listing of that folder from the
cursor's entry (S3's StartAfter; a bisect of a local folder's sorted listing), and the records
of the page's own items. The cursor is the sort key of an id, so it keeps working after the
object it names is deleted, as long as the key can be told from the id alone (see
:func:`batch_assets.lifecycle.files.new_file_id`). An index is built once from the records that
came before it (marked by :data:`INDEX_BUILT` in its folder); afterwards each writer keeps it.
"""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

from resources.layout import INDEX_BUILT
from resources.storage import BatchStorage

T = TypeVar("T")
MAX_MS = (1 << 48) - 1  # 12 hex digits of milliseconds: the year 10889
READERS = 8  # records of a page read at once


def entry_name(sort_ms: int, item_id: str) -> str:
    """The index entry of an item: names sort newest first, then by id."""
    return f"{MAX_MS - sort_ms:012x}_{item_id}"


def entry_id(name: str) -> str:
    return name.split("_", 1)[1]


def ensure_index(storage: BatchStorage, folder: str, entries: Callable[[], Iterable[str]]) -> None:
    """Give every item that came before the index its entry, once."""
    built = f"{folder}/{INDEX_BUILT}"
    if storage.exists(built):
        return
    for name in entries():
        storage.write_bytes(f"{folder}/{name}", b"")
    storage.write_bytes(built, b"")


def index_page(
    storage: BatchStorage,
    folder: str,
    after: str | None,
    newest_first: bool,
    limit: int,
    load: Callable[[str], T | None],
) -> tuple[list[T], bool]:
    """Up to ``limit`` items after the entry ``after``, and whether more follow. ``load`` gives
    an entry's item, or None to leave it out (deleted since, filtered out)."""
    names = (
        name
        for name in storage.list_names(folder, after, reverse=not newest_first)
        if not name.startswith(".")
    )
    # On S3 each record is a request of its own, bound by latency: read a page's at once. A
    # local read is quicker than handing it to a thread.
    if storage.is_local:
        return _collect(names, limit, lambda chunk: map(load, chunk))
    with ThreadPoolExecutor(READERS) as pool:
        return _collect(names, limit, lambda chunk: pool.map(load, chunk))


def _collect(
    names: Iterator[str], limit: int, load_all: Callable[[list[str]], Iterable[T | None]]
) -> tuple[list[T], bool]:
    """The first ``limit`` items the names give (reading one more to know if more follow)."""
    found: list[T] = []
    while len(found) <= limit:
        chunk = list(islice(names, limit + 1 - len(found)))
        if not chunk:
            break
        found += [item for item in load_all(chunk) if item is not None]
    return found[:limit], len(found) > limit
