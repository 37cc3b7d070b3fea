"""The output folder: cpo's own files are recognised by their marks, anything else is refused
(or left alone with `overwrite_output_dir`), and one run at a time holds the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpo_cli.engine.manifest import PARTIAL_MARK, write_manifest
from cpo_cli.engine.outdir import (
    LOCK_FILE,
    MARKER,
    RunLock,
    check_output_dir,
    claim,
    create_partial,
    foreign_checkpoints_ahead,
    foreign_entries,
    remove_partials,
)
from cpo_cli.errors import OutputDirError


def test_an_empty_or_missing_folder_is_fine(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new", overwrite_output_dir=False) == []
    assert check_output_dir(tmp_path, overwrite_output_dir=False) == []


def test_only_what_cpo_claimed_or_marked_is_its_own(tmp_path: Path) -> None:
    claim(tmp_path, ["metrics.jsonl", "config.json"])
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "config.json").write_text("{}")
    ours = tmp_path / "checkpoint-5"
    ours.mkdir()
    (ours / "x").write_text("x")
    write_manifest(ours, global_step=5, cpo_version="test")
    create_partial(tmp_path / ".tmp-checkpoint-6")
    (tmp_path / "notes.txt").write_text("mine")
    theirs = tmp_path / "checkpoint-10"
    theirs.mkdir()
    (theirs / "weights.bin").write_text("mine too")
    assert [p.name for p in foreign_entries(tmp_path)] == ["checkpoint-10", "notes.txt"]


def test_foreign_files_are_refused_naming_them(tmp_path: Path) -> None:
    for name in ("notes.txt", "data.csv"):
        (tmp_path / name).write_text("mine")
    with pytest.raises(OutputDirError) as caught:
        check_output_dir(tmp_path, overwrite_output_dir=False)
    assert "holds files cpo did not write: data.csv, notes.txt" in caught.value.message
    assert "overwrite_output_dir=true" in (caught.value.hint or "")
    notes = check_output_dir(tmp_path, overwrite_output_dir=True)
    assert len(notes) == 1 and "left alone" in notes[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors", "metrics.jsonl", "recipe.yaml"]
)
def test_a_foreign_file_cpo_would_replace_is_refused_even_with_overwrite(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / name).write_text("mine")
    with pytest.raises(OutputDirError, match=f"holds {name}, which cpo did not write"):
        check_output_dir(tmp_path, overwrite_output_dir=True)


def test_a_foreign_checkpoint_is_refused_only_where_this_run_may_save(tmp_path: Path) -> None:
    theirs = tmp_path / "checkpoint-10"
    theirs.mkdir()
    (theirs / "user_file.txt").write_text("mine")
    ours = tmp_path / "checkpoint-20"
    ours.mkdir()
    write_manifest(ours, global_step=20, cpo_version="test")
    assert len(check_output_dir(tmp_path, overwrite_output_dir=True)) == 1
    foreign_checkpoints_ahead(tmp_path, 0, 9)  # a 9-step run never saves checkpoint-10
    foreign_checkpoints_ahead(tmp_path, 10, 30)  # resumed from step 10: saves 11-30 only
    with pytest.raises(OutputDirError) as caught:
        foreign_checkpoints_ahead(tmp_path, 0, 30)
    assert "holds checkpoint-10/, which cpo did not write, and this run (steps 1-30)" in str(
        caught.value
    )


def test_partial_folders_are_removed_only_when_marked(tmp_path: Path) -> None:
    ours = create_partial(tmp_path / ".tmp-checkpoint-3")
    (ours / "model.safetensors").write_bytes(b"half")
    theirs = tmp_path / ".tmp-keep"
    theirs.mkdir()
    remove_partials(tmp_path)
    assert not ours.exists() and theirs.is_dir()
    assert (create_partial(tmp_path / ".tmp-final") / PARTIAL_MARK).is_file()


# --------------------------------------------------------------------------- the lock

_HOLD = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": "elsewhere", "pid": os.getpid()}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_held_lock_refuses_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError) as caught:
            RunLock(tmp_path).acquire()
        assert f"in use by another cpo run (host elsewhere, PID {holder.pid}" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    # its process gone, the kernel dropped the flock: the lock is taken over, with a note
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note is not None and f"PID {holder.pid}" in note and "gone" in note
    lock.release()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": "yesterday"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note == (
        f"took over the lock of a run that is gone (host {socket.gethostname()}, "
        f"PID {dead.pid}, since yesterday)"
    )
    held = json.loads((tmp_path / LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(OutputDirError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()  # a second run, even in the same process
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    again = RunLock(tmp_path)
    assert again.acquire() is None
    again.release()


def test_a_live_process_recorded_on_this_host_is_respected_without_flock(tmp_path: Path) -> None:
    """Where flock is not enforced (some network filesystems) the record still protects."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        record = {"host": socket.gethostname(), "pid": alive.pid}
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(OutputDirError, match=f"PID {alive.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        alive.kill()
        alive.wait()


def test_the_marker_lists_what_was_claimed(tmp_path: Path) -> None:
    claim(tmp_path, ["b", "a"])
    claim(tmp_path, ["a", "c"])
    assert json.loads((tmp_path / MARKER).read_text())["owned"] == ["a", "b", "c"]
