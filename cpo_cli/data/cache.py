"""The prepared-data cache of `cpo train` / `cpo eval`: bounded, pruned by last use.

Each entry is a prepared folder written by `save_prepared` plus a marker file whose mtime is
the entry's last use. Only folders carrying the marker are ever deleted, so pointing
`CPO_CACHE` at a folder with other data in it cannot lose that data. Entries are keyed on the
content of their source files (see `prepare._cache_folder`); pruning only needs a cheap guess of
which entries can no longer be hit: those whose source files changed size or time (or were
deleted) go first; beyond that the least recently used go until `CPO_PREPARED_CACHE_ENTRIES`
(default 16) remain.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cpo_cli.cache_root import cache_root

MARKER = ".cpo-cache-entry"
DEFAULT_MAX_ENTRIES = 16


def prepared_cache_dir() -> Path:
    """Where raw datasets prepared by `cpo train` / `cpo eval` are cached: `<cache root>/prepared`
    (keyed by the content of the source files, the settings and the tokenizer, so reuse is
    safe)."""
    return cache_root() / "prepared"


def mark_used(entry: Path, sources: Sequence[Path]) -> None:
    """Record that `entry` (a prepared folder) was just used, and the source files it was made
    from with their sizes and mtimes, which tell later whether the entry can still be hit. A
    read-only cache (shared between users) is used as is: housekeeping never fails a run."""
    try:
        record = {"sources": [_file_record(p) for p in sources]}
        marker = entry / MARKER
        marker.write_text(json.dumps(record))
        os.utime(marker)  # the last use, even when the content did not change
    except OSError:
        return


def max_entries() -> int:
    """`CPO_PREPARED_CACHE_ENTRIES`, or the default; 0 or less keeps everything."""
    raw = os.environ.get("CPO_PREPARED_CACHE_ENTRIES", "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_ENTRIES
    except ValueError:
        return DEFAULT_MAX_ENTRIES


def prune(cache_dir: Path, *, keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Delete stale entries, then the least recently used beyond `limit`; never `keep`.
    Returns the folders removed. Errors (a folder in use elsewhere) are skipped, not raised:
    pruning is housekeeping and must never fail a run."""
    limit = max_entries() if limit is None else limit
    if not cache_dir.is_dir():
        return []
    entries = [p for p in cache_dir.iterdir() if (p / MARKER).is_file()]
    keep_resolved = keep.resolve() if keep is not None else None
    candidates = [p for p in entries if p.resolve() != keep_resolved]
    stale = [p for p in candidates if not _source_unchanged(p)]
    fresh = sorted(
        (p for p in candidates if p not in stale),
        key=lambda p: (p / MARKER).stat().st_mtime,
        reverse=True,
    )
    room = max(limit - (1 if keep_resolved is not None else 0), 0)
    doomed = stale + (fresh[room:] if limit > 0 else [])
    removed = []
    for folder in doomed:
        try:
            shutil.rmtree(folder)
            removed.append(folder)
        except OSError:
            continue
    return removed


def _file_record(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _source_unchanged(entry: Path) -> bool:
    """The entry's source files still exist with the sizes and mtimes they were prepared from."""
    try:
        record = json.loads((entry / MARKER).read_text())
        files = record["sources"]
        return bool(files) and all(_file_record(Path(f["source"])) == f for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False
