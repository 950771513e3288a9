"""The local-folder backend of :class:`resources.storage.BatchStorage`."""

import bisect
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from resources.layout import SPOOL_FOLDER
from resources.storage_base import ObjectInfo, UnsafeKeyError

# A spool file untouched this long belongs to a writer that was killed (kill -9 skips the
# cleanup); every live writer touches its file far more often than this.
STALE_SPOOL_AGE_S = 24 * 3600


class LocalBackend:
    is_local = True

    def __init__(self, root: str):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self._swept = False  # the spool folder, of files that killed writers left

    def local_path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        # A symlink anywhere on the way may point outside the root: refuse it.
        if path.exists() and not path.resolve().is_relative_to(self.root):
            raise UnsafeKeyError(f"storage key points outside the root: {key!r}")
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.local_path(key)
        if not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", st.st_mtime_ns)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        base = self.local_path(prefix)
        if not base.is_dir():
            return
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):  # never follows symlinked folders
            for name in filenames:
                path = Path(dirpath) / name
                if not path.is_symlink() and path.is_file():
                    keys.append(path.relative_to(self.root).as_posix())
        for key in sorted(keys):
            if start_after is None or key > start_after:
                info = self.stat(key)
                if info is not None:
                    yield info

    def list_names(
        self, folder: str, start_after: str | None = None, reverse: bool = False
    ) -> Iterator[str]:
        """The names of the files directly in ``folder``, in name order (descending with
        ``reverse``), after ``start_after``: one sorted listing of the folder, kept while the
        folder's modification time says nothing was added or removed."""
        names = _sorted_names(self.local_path(folder))
        if reverse:
            end = bisect.bisect_left(names, start_after) if start_after is not None else len(names)
            return (names[k] for k in range(end - 1, -1, -1))
        begin = bisect.bisect_right(names, start_after) if start_after is not None else 0
        return (names[k] for k in range(begin, len(names)))

    @contextmanager
    def open_read(self, key: str) -> Iterator[io.BufferedReader]:
        with self.local_path(key).open("rb") as stream:
            yield stream

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        path = self.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Spool beside the tree (same filesystem, so the rename is atomic), not beside the
        # target: a folder watcher never sees a half-written file, even after a kill -9.
        fd, tmp = tempfile.mkstemp(dir=self._spool_folder(), prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _spool_folder(self) -> Path:
        """The spool folder; the first call also sweeps out what killed writers left."""
        spool = self.root / SPOOL_FOLDER
        spool.mkdir(exist_ok=True)
        if not self._swept:
            cutoff = time.time() - STALE_SPOOL_AGE_S
            for leftover in spool.iterdir():
                try:
                    if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                        leftover.unlink()
                except OSError:
                    continue  # gone already, or another sweeper got it first
            self._swept = True
        return spool

    def put_file(self, local_path: Path, key: str) -> None:
        with local_path.open("rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        st = local_path.stat()
        os.utime(self.local_path(key), ns=(st.st_atime_ns, st.st_mtime_ns))

    def matches_file(self, local_path: Path, key: str) -> bool:
        here, there = local_path.stat(), self.local_path(key).stat()
        return (here.st_size, here.st_mtime_ns) == (there.st_size, there.st_mtime_ns)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.local_path(prefix), ignore_errors=True)

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


_LISTINGS: dict[Path, tuple[int, list[str]]] = {}
_MAX_LISTINGS = 64
_SETTLED_NS = 1_000_000_000


def _sorted_names(folder: Path) -> list[str]:
    """The folder's names (an index holds files only), sorted; reused while the folder's
    mtime is unchanged (a name added or removed changes it), so a page of a large folder costs
    a bisect, not a sort."""
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    known = _LISTINGS.get(folder)
    if known is not None and known[0] == mtime:
        return known[1]
    settled = time.time_ns() - mtime > _SETTLED_NS  # a later change in the same clock tick
    # as the listing would leave the mtime as it is: only an mtime that old is trusted
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    if settled:
        if len(_LISTINGS) >= _MAX_LISTINGS:
            _LISTINGS.clear()
        _LISTINGS[folder] = (mtime, names)
    return names
