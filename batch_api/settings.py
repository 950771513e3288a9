"""What one API server serves: the storage, the keys, the upload limit."""

from dataclasses import dataclass

from batch_api.keys import KeyRing
from resources.storage import BatchStorage


@dataclass(frozen=True)
class APISettings:
    storage: BatchStorage
    keys: KeyRing
    max_file_bytes: int = 8 << 30
