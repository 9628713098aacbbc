"""On-disk cache of finished sweep candidates, so a killed sweep resumes where it stopped.

One JSON file per candidate, named by the SHA-256 of everything its scores depend on (model
fingerprint, recipe hash, probes, generation settings, the window), written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..storage import atomic_write_text


class CandidateCache:
    """A folder of ``<key>.json`` entries; ``None`` folder disables caching."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    @staticmethod
    def key(**parts: object) -> str:
        """A stable key for the given JSON-serializable parts."""
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The cached entry ``{"scores": [...], "seconds": s}``, or None (also for an unreadable
        or malformed entry, which is then redone)."""
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict):
            return None
        scores, seconds = entry.get("scores"), entry.get("seconds")
        numbers = isinstance(scores, list) and scores and all(map(_is_number, scores))
        return entry if numbers and _is_number(seconds) else None

    def put(self, key: str, entry: dict) -> None:
        """Store an entry atomically."""
        if self.folder is not None:
            atomic_write_text(self.folder / f"{key}.json", json.dumps(entry, sort_keys=True))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
