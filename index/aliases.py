"""Aliases of the embedded index: alias -> collection, persisted in `<root>/aliases.json`.

Readers look names up in an immutable dict that a switch replaces whole (one reference
assignment), so a read during a switch sees the old mapping or the new one. The file is written
before the in-memory swap (temp file + os.replace), so after a crash the aliases are the last
ones a `set`/`delete` returned from.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from clipserve.index.jsonfile import read_json, write_json_atomic

ALIASES_FILE = "aliases.json"
_FORMAT = 1


class AliasTable:
    """alias -> collection for one index root. Writers serialise on an internal lock."""

    def __init__(self, root: Path) -> None:
        self._path = root / ALIASES_FILE
        self._lock = threading.Lock()
        mapping: dict[str, str] = {}
        if self._path.exists():
            data = read_json(self._path)
            if data.get("format") != _FORMAT or not isinstance(data.get("aliases"), dict):
                raise ValueError(f"{self._path}: unsupported alias file {data}")
            mapping = {str(k): str(v) for k, v in data["aliases"].items()}
        self._map: Mapping[str, str] = MappingProxyType(mapping)

    def get(self, alias: str) -> str | None:
        return self._map.get(alias)

    def snapshot(self) -> dict[str, str]:
        return dict(self._map)

    def set(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection`; return the collection it named before (or None)."""
        with self._lock:
            previous = self._map.get(alias)
            self._replace({**self._map, alias: collection})
            return previous

    def delete(self, alias: str) -> bool:
        """Remove `alias`; False if there was no such alias."""
        with self._lock:
            if alias not in self._map:
                return False
            self._replace({k: v for k, v in self._map.items() if k != alias})
            return True

    def drop_target(self, collection: str) -> None:
        """Remove every alias that names `collection` (it is being dropped)."""
        with self._lock:
            kept = {k: v for k, v in self._map.items() if v != collection}
            if len(kept) != len(self._map):
                self._replace(kept)

    def _replace(self, mapping: dict[str, str]) -> None:
        write_json_atomic(self._path, {"format": _FORMAT, "aliases": mapping})
        self._map = MappingProxyType(mapping)
