"""The output folder of a run: only cpo's own files are ever replaced or deleted, and only one
run writes into it at a time.

- `.cpo-output.json` lists the top-level names cpo wrote there; a name is claimed before the
  file is written. Checkpoints carry their own mark (their manifest), folders being written a
  `.cpo-partial` file created first.
- A folder holding anything else is refused unless `overwrite_output_dir` is set; even then
  those files are left alone, and one cpo would have to replace is refused outright.
- `.cpo-lock` is held for the whole run with `flock` and records the holder's host and PID. The
  kernel drops an flock when its process dies, so a lock left by a killed run is taken over.
Main process only: the other processes of a run never write here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cpo_cli.engine.manifest import PARTIAL_MARK, is_marked
from cpo_cli.errors import OutputDirError

MARKER = ".cpo-output.json"
LOCK_FILE = ".cpo-lock"
#: names cpo writes at the top of an output folder at every run's end; a foreign entry by one of
#: these names would be replaced, so it is refused even with `overwrite_output_dir`. (A foreign
#: `checkpoint-N` is refused only when this run could save step N: `foreign_checkpoints_ahead`.)
_WRITES = re.compile(
    r"^(\.tmp-.*|\.old-.*|recipe\.yaml|metrics\.jsonl|train_results\.json|"
    r"config\.json|generation_config\.json|model.*\.safetensors(\.index\.json)?|"
    r"adapter_(config\.json|model\.safetensors)|tokenizer.*|special_tokens_map\.json|"
    r"added_tokens\.json|chat_template\.(jinja|json)|vocab\..*|merges\.txt|spiece\.model)$"
)
_SHOWN = 5


def owned_names(directory: Path) -> set[str]:
    """The top-level names cpo claimed in `directory` (empty when it has no marker)."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        return {str(n) for n in data.get("owned", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def claim(directory: Path, names: Iterable[str]) -> None:
    """Record `names` as cpo's before writing them (atomically; creates the marker)."""
    owned = owned_names(directory)
    new = set(names) - owned
    if not new and (directory / MARKER).is_file():
        return
    record = {"format": "cpo-output", "owned": sorted(owned | new)}
    part = directory / (MARKER + ".part")
    part.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(part, directory / MARKER)


def is_ours(entry: Path, owned: set[str]) -> bool:
    """Whether cpo wrote this top-level entry of an output folder."""
    name = entry.name
    if name in (MARKER, LOCK_FILE, MARKER + ".part") or name in owned:
        return True
    if entry.is_dir() and name.startswith(("checkpoint-", ".tmp-", ".old-")):
        return is_marked(entry) or (entry / PARTIAL_MARK).is_file()
    return False


def foreign_entries(directory: Path) -> list[Path]:
    """Top-level entries of `directory` that cpo did not write, sorted by name."""
    if not directory.is_dir():
        return []
    owned = owned_names(directory)
    return sorted((p for p in directory.iterdir() if not is_ours(p, owned)), key=lambda p: p.name)


def _listing(paths: list[Path]) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths[:_SHOWN]]
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(names) + more


def check_output_dir(directory: Path, *, overwrite_output_dir: bool) -> list[str]:
    """Refuse a folder holding files cpo did not write (unless `overwrite_output_dir`), and any
    such file that cpo would replace. Returns notes to print."""
    foreign = foreign_entries(directory)
    if not foreign:
        return []
    replaced = [p for p in foreign if _WRITES.match(p.name)]
    if replaced:
        raise OutputDirError(
            f"training.output_dir: {directory} holds {_listing(replaced)}, which cpo did not "
            "write and would replace",
            hint="move them away or choose another training.output_dir (cpo only ever "
            "replaces or deletes files it wrote itself)",
        )
    if not overwrite_output_dir:
        raise OutputDirError(
            f"training.output_dir: {directory} is not empty and holds files cpo did not write: "
            f"{_listing(foreign)}",
            hint="choose another training.output_dir, or set training.overwrite_output_dir=true "
            "to write beside them (they are left alone)",
        )
    return [f"{directory} holds files cpo did not write ({_listing(foreign)}); they are left alone"]


def foreign_checkpoints_ahead(directory: Path, first_step: int, last_step: int) -> None:
    """Refuse a `checkpoint-N` cpo did not write where this run may save (first < N <= last):
    it would have to replace it. Called once the run's steps are known, before training."""
    if not directory.is_dir():
        return
    owned = owned_names(directory)
    ahead = sorted(
        (
            p
            for p in directory.iterdir()
            if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
            and first_step < int(m.group(1)) <= last_step
            and not is_ours(p, owned)
        ),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if ahead:
        raise OutputDirError(
            f"training.output_dir: {directory} holds {_listing(ahead)}, which cpo did not "
            f"write, and this run (steps {first_step + 1}-{last_step}) may save a checkpoint "
            "by that name",
            hint="move them away or choose another training.output_dir (cpo only ever "
            "replaces or deletes files it wrote itself)",
        )


def create_partial(path: Path) -> Path:
    """Create `path`, a hidden staging folder, marked as cpo's before anything goes in (so a
    crash leaves a folder that the next run recognises and removes)."""
    import shutil

    if path.exists() and (path / PARTIAL_MARK).is_file():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / PARTIAL_MARK).write_text("being written by cpo\n", encoding="utf-8")
    return path


def remove_partials(directory: Path) -> None:
    """Delete staging folders cpo left behind (a crash or a signal mid-save); only marked ones."""
    import shutil

    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".tmp-") and (entry / PARTIAL_MARK).is_file():
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- the lock


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a reused PID from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _process_start(pid) in (None, start)


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("started")
    when = f", since {since}" if since else ""
    return f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}{when}"


class RunLock:
    """An exclusive lock on an output folder for the length of a run (main process only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; return a note when a stale lock was taken over. Raises
        `OutputDirError` naming the holder's host and PID when another run holds it."""
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                note = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if note == "retry":
                os.close(fd)
                continue
            self._fd = fd
            return note
        raise OutputDirError(f"{self.path}: could not take the lock (it keeps changing)")

    def _lock(self, fd: int) -> str | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            self._refuse(_read_holder(fd))
        except OSError:  # a filesystem without flock: the recorded PID is all there is
            flocked = False
        try:
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                return "retry"  # the holder released (unlinked) it between our open and flock
        except FileNotFoundError:
            return "retry"
        previous = _read_holder(fd)
        here = socket.gethostname()
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == here
            pid = previous.get("pid")
            alive = isinstance(pid, int) and _alive(pid, previous.get("start"))
            if (same_host and alive) or (not flocked and not same_host):
                self._refuse(previous)
        record = {
            "host": here,
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv[:3])[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        if previous and previous.get("pid") != os.getpid():
            return f"took over the lock of a run that is gone ({_describe(previous)})"
        return None

    def _refuse(self, holder: dict[str, Any] | None) -> None:
        who = _describe(holder) if holder else "holder unknown"
        raise OutputDirError(
            f"training.output_dir: {self.directory} is in use by another cpo run ({who})",
            hint="wait for it to finish or choose another training.output_dir; if that run is "
            f"gone (e.g. its machine died), delete {self.path}",
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding it: a waiting run re-opens the new file
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
