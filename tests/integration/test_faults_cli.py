"""Real `cpo train` subprocesses on the tiny model, stopped by real signals: SIGTERM and SIGUSR1
write a checkpoint and exit 143/138, and the run resumes from it; two runs into one output
folder; a run killed with SIGKILL leaves a stale lock that the next run takes over; a signal to
one of two torchrun processes stops both at the same step (slow: `make test-all`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import REPO, TINY_RUN
from support import write_recipe as write_recipe_file

from cpo_cli.engine.checkpoint import checkpoint_problem

pytestmark = pytest.mark.usefixtures("private_cache")  # prepared pairs stay out of ~/.cache

#: a run long enough to be stopped mid-way: 2000 steps, a checkpoint every 1000
LONG_RUN = {**TINY_RUN, "max_steps": 2000, "save_strategy": "steps", "save_steps": 1000,
            "max_length": 128, "max_prompt_length": 64}  # fmt: skip


def write_recipe(tmp_path: Path, model_dir: Path, train: Path, out: Path, **training: Any) -> Path:
    return write_recipe_file(
        tmp_path / "recipe.yaml", model_dir, train=train, out=out, train_rows=64,
        **{**LONG_RUN, **training},
    )  # fmt: skip


def start(recipe: Path, log: Path, *overrides: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "NO_COLOR": "1"}
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "cpo_cli", "train", str(recipe), *overrides],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_for(
    condition: Any, process: subprocess.Popen[str], log: Path, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"cpo train exited {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow)],
)
def test_a_signal_mid_run_saves_a_checkpoint_and_the_run_resumes_from_it(
    signum: int,
    code: int,
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_dir, demo_train_path, out)
    log = tmp_path / "log.txt"
    process = start(recipe, log)
    wait_for(lambda: "step 3/2000" in log.read_text(), process, log)
    sent = time.monotonic()
    process.send_signal(signum)
    assert process.wait(timeout=300) == code, log.read_text()[-3000:]
    seconds = time.monotonic() - sent
    text = log.read_text()
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None
    step = int(checkpoints[0].name.split("-")[1])
    name = signal.Signals(signum).name
    assert f"error: stopped by {name} after step {step} of 2000; checkpoint saved: " in text
    assert f"hint: resume with: cpo train {recipe} training.resume_from_checkpoint=last" in text
    assert "Traceback" not in text and not list(out.glob(".tmp-*"))
    assert json.loads((out / "train_results.json").read_text())["status"] == "stopped"
    print(f"{name}: exit {code} {seconds:.2f} s after the signal, checkpoint at step {step}")
    if signum != signal.SIGTERM:
        return
    # a requeued job: the same command with `auto` continues from the checkpoint
    resumed = start(recipe, tmp_path / "log2.txt", f"training.max_steps={step + 2}",
                    "training.resume_from_checkpoint=auto")  # fmt: skip
    assert resumed.wait(timeout=600) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert f"resumed from {checkpoints[0]} (step {step})" in (tmp_path / "log2.txt").read_text()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 3))


def test_two_runs_into_one_folder_and_a_killed_run_s_stale_lock(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    """Run A holds the folder (frozen with SIGSTOP so the timing cannot matter); run B is
    refused naming A's host and PID. A is then killed with SIGKILL: its lock is stale, and the
    next run takes it over with a note and finishes."""
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_dir, demo_train_path, out, max_steps=3)
    first = start(recipe, tmp_path / "a.txt")
    wait_for(lambda: (out / ".cpo-lock").is_file(), first, tmp_path / "a.txt")
    first.send_signal(signal.SIGSTOP)
    try:
        second = start(recipe, tmp_path / "b.txt")
        assert second.wait(timeout=300) == 1
        text = (tmp_path / "b.txt").read_text()
        holder = f"host {socket.gethostname()}, PID {first.pid}, since "
        assert f"is in use by another cpo run ({holder}" in text and "Traceback" not in text
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = start(recipe, tmp_path / "c.txt")
    assert third.wait(timeout=600) == 0, (tmp_path / "c.txt").read_text()[-3000:]
    text = (tmp_path / "c.txt").read_text()
    assert f"warning: took over the lock of a run that is gone (host {socket.gethostname()}, " \
        f"PID {first.pid}, since " in text  # fmt: skip
    assert (out / "model.safetensors").is_file() and not (out / ".cpo-lock").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    """SIGUSR1 to one of two processes only (torchrun, CPU): they agree at the next step's
    all-reduce, write one checkpoint together (each its RNG state) and both exit 138."""
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path, tiny_model_dir, demo_train_path, out, per_device_train_batch_size=2
    )
    log = tmp_path / "log.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "NO_COLOR": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    with log.open("w") as sink:
        agent = subprocess.Popen(
            [*launcher, "-m", "cpo_cli", "train", str(recipe)],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    wait_for(lambda: "step 3/2000" in log.read_text(), agent, log)
    workers = subprocess.run(
        ["pgrep", "-P", str(agent.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGUSR1)
    assert agent.wait(timeout=300) != 0
    text = log.read_text()
    (checkpoint,) = out.glob("checkpoint-*")
    assert checkpoint_problem(checkpoint) is None
    assert {p.name for p in (checkpoint / "accelerate").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl",
    }  # fmt: skip
    step = checkpoint.name.split("-")[1]
    assert f"error: stopped by SIGUSR1 after step {step} of 2000" in text
    assert text.count("exitcode  : 138") == 2, text[-3000:]
