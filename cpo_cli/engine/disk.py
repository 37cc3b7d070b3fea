"""A full disk while writing becomes one line: what was being written, where, how much space
is free, and what is kept. The libraries that write for us report it in their own ways:
`OSError(ENOSPC)` from Python, "No space left on device (os error 28)" from safetensors, and
"unexpected pos 576 vs 534" (errno lost) from torch.save's zip writer."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from cpo_cli.errors import DiskFullError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "storagefull")
#: torch.save's writer failing; a disk full only if the disk is (nearly) full when it fails
_WRITER_TEXT = ("unexpected pos", "file write failed", "iostream error")
_NEARLY_FULL = 1 << 20


def free_bytes(path: Path) -> int | None:
    """Free space for this user on the filesystem holding `path` (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def is_disk_full(exc: BaseException, where: Path) -> bool:
    """Whether `exc` (or one it was raised from) is a write that failed for lack of space."""
    seen: set[int] = set()
    current: BaseException | None = exc
    texts = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        texts.append(str(current).lower())
        hidden = current.__suppress_context__ and current.__cause__ is None
        current = current.__cause__ or (None if hidden else current.__context__)
    text = " ".join(texts)
    if any(t in text for t in _FULL_TEXT):
        return True
    if any(t in text for t in _WRITER_TEXT):
        free = free_bytes(where)
        return free is not None and free < _NEARLY_FULL
    return False


def _newest_file(folder: Path) -> Path | None:
    newest: tuple[float, Path] | None = None
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime
                if newest is None or mtime >= newest[0]:
                    newest = (mtime, path)
    return newest[1] if newest else None


def _size_of(folder: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


@contextlib.contextmanager
def disk_full_as_error(
    what: str,
    where: Path,
    *,
    staging: Path | None = None,
    kept: Callable[[], str] | None = None,
) -> Iterator[None]:
    """Turn a disk-full failure inside the block into a `DiskFullError`. `staging`, a partial
    folder the block was writing, is removed (after noting how far the write got); `kept` says
    what is safe on disk (e.g. the last good checkpoint)."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, DiskFullError) or not isinstance(exc, Exception):
            raise  # already said (by an inner block), or not an error at all (Ctrl-C)
        if not is_disk_full(exc, where):
            raise
        detail = ""
        if staging is not None and staging.is_dir():
            newest = _newest_file(staging)
            detail = f" ({human(_size_of(staging))} written"
            if newest is not None:
                detail += f", the last file {newest.relative_to(staging).as_posix()}"
            detail += ")"
            shutil.rmtree(staging, ignore_errors=True)
        free = free_bytes(where)
        free_text = f"{human(free)} free" if free is not None else "free space unknown"
        removed = "; the partial files were removed" if staging is not None else ""
        tail = f"; {kept()}" if kept is not None else ""
        raise DiskFullError(
            f"disk full while writing {what} in {where}{detail}: {free_text}{removed}{tail}",
            hint="free some space (or set training.save_total_limit) and resume with "
            "training.resume_from_checkpoint=last",
        ) from None
