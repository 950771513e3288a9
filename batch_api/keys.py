"""API keys: each belongs to one project (or to the root of a storage without projects).

``BATCH_API_KEYS`` holds comma-separated ``PROJECT:KEY`` entries (a bare ``KEY`` is the root,
for a storage without projects). ``BATCH_API_KEYS_FILE`` names a file of ``PROJECT:SHA256``
lines (``#`` comments allowed; ``root`` for the root), so a deployment stores no key in the
clear. Keys are compared as SHA-256 digests with :func:`hmac.compare_digest` against every
entry, so neither the time taken nor an early exit tells which entry was close.
"""

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

ROOT_PROJECT = "root"  # the name of the root in a keys file


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """Digests of the accepted keys, each with its project (None: the root)."""

    entries: tuple[tuple[bytes, str | None], ...]

    @property
    def empty(self) -> bool:
        return not self.entries

    def project_of(self, key: str) -> tuple[bool, str | None]:
        """``(found, project)`` of ``key``, looking at every entry whatever matches."""
        presented = digest(key)
        found, project = False, None
        for stored, owner in self.entries:
            if hmac.compare_digest(presented, stored) and not found:
                found, project = True, owner
        return found, project

    @classmethod
    def parse(cls, keys: str = "", keys_file: str | None = None) -> "KeyRing":
        entries: list[tuple[bytes, str | None]] = []
        for entry in (part.strip() for part in keys.split(",")):
            if not entry:
                continue
            project, sep, key = entry.rpartition(":")
            if not sep:
                project, key = "", entry
            if not key:
                raise ValueError("BATCH_API_KEYS: an entry has an empty key")
            entries.append((digest(key), project or None))
        if keys_file:
            for number, raw in enumerate(Path(keys_file).read_text().splitlines(), 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                project, sep, hexdigest = line.rpartition(":")
                if not sep or len(hexdigest) != 64:
                    raise ValueError(
                        f"{keys_file}:{number}: expected PROJECT:SHA256 (64 hex digits)"
                    )
                owner = None if project in ("", ROOT_PROJECT) else project
                entries.append((bytes.fromhex(hexdigest), owner))
        return cls(tuple(entries))

    @classmethod
    def from_env(cls) -> "KeyRing":
        return cls.parse(
            os.environ.get("BATCH_API_KEYS", ""), os.environ.get("BATCH_API_KEYS_FILE")
        )
