"""Several processes through the real CLI on the tiny model: DDP, FSDP2 and DeepSpeed ZeRO-2/3 on
two CPU processes train, checkpoint, resume and save a loadable model that matches one process;
an error on one rank reaches the user; save_on_each_node on two simulated machines; a resume on
another number of processes; the start-up line and its warnings.

What is proven where: accelerate turns FSDP and DeepSpeed on only with accelerator devices, so
the FSDP/ZeRO runs go through `cpu_sharding_shim.py`, which switches accelerate's state to
FSDP/DEEPSPEED once the two-process gloo group has formed (nothing else is replaced). The FSDP
and ZeRO settings come either from the recipe (`fsdp`, `deepspeed`) or from the environment
that accelerate's own GPU launcher derives from the shipped configs/accelerate/*.yaml. NCCL,
GPUs, mixed precision and more than one real machine are for benchmarks/device_check_distributed.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Result, cpo_process, write_recipe

SHIM = Path(__file__).with_name("cpu_sharding_shim.py")
STEPS = 3
#: 1 process x 4 pairs x 2 micro-batches == 2 processes x 2 pairs x 2 micro-batches
REFERENCE = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
TWO_PROCESSES = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
#: weights after 3 SGD steps; float sums in another order stay far below this
WEIGHT_TOL = 1e-6

pytestmark = pytest.mark.distributed


def recipe_file(path: Path, model_dir: Path, train: Path, out: Path, **training: Any) -> Path:
    """A 3-step run on 24 demo pairs saving at step 2 (the shared recipe writer)."""
    settings = {
        "max_steps": STEPS,
        # SGD with momentum: an optimizer state to save and resume, and updates linear in the
        # gradients, so float sums in another order stay at rounding level (Adam would scale
        # the noise of near-zero gradients up to a full step)
        "optim": "sgd",
        "optim_args": "momentum=0.9",
        "learning_rate": 0.05,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 2,
        "report_to": "none",
        **training,
    }
    return write_recipe(path, model_dir, train=train, out=out, train_rows=24, **settings)


#: what `cpo_process` sets, for the processes started here directly
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1"}


def extra_env(cache: Path, **more: str) -> dict[str, str]:
    """A private data cache; DeepSpeed told it runs on the CPU (it would log its guess)."""
    return {"CPO_CACHE": str(cache), "DS_ACCELERATOR": "cpu", **more}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args: list[str], env: dict[str, str], *, shim: bool = False) -> Result:
    """Two processes on this machine (a free port), through the sharding shim when asked."""
    return cpo_process(*args, launcher=TORCHRUN, env=env, script=SHIM if shim else None)


def accelerate_worker_env(config_file: Path, processes: int) -> dict[str, str]:
    """The environment accelerate's own GPU launcher gives each worker for this config file
    (its parser, its config classes, its env builders), without its device checks."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    argv = ["--config_file", str(config_file), "--num_processes", str(processes), "x.py"]
    args, defaults, precision_from_config = _validate_launch_command(parser.parse_args(argv))
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] * precision_from_config)
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    wanted = ("ACCELERATE_", "FSDP_")
    return {k: v for k, v in env.items() if k.startswith(wanted) and k != "ACCELERATE_USE_CPU"}


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses(folder: Path) -> list[float]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def start_up_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("run: "))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cpo_cache")


@pytest.fixture(scope="module")
def one_process(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cache: Path,
) -> Path:
    """The reference: the same 8 pairs per optimizer step on one process."""
    folder = tmp_path_factory.mktemp("one")
    recipe = recipe_file(
        folder / "r.yaml", tiny_model_dir, demo_train_path, folder / "out", **REFERENCE
    )
    done = cpo_process("train", str(recipe), env=extra_env(cache))
    assert done.exit_code == 0, done.stderr[-3000:]
    return folder / "out"


MODES = {
    # name: (recipe additions, accelerate config whose launcher env is used, start-up mode)
    "ddp": ({}, None, "DDP (gloo)"),
    "fsdp2-sharded-from-accelerate-config": (
        {},
        "fsdp2.yaml",
        "FSDP2 (full shard; SHARDED_STATE_DICT checkpoints)",
    ),
    "fsdp2-full-state-from-recipe": (
        {
            "fsdp": "shard_grad_op auto_wrap",
            "fsdp_config": {"state_dict_type": "FULL_STATE_DICT"},
        },
        None,
        "FSDP2 (shard grad op; FULL_STATE_DICT checkpoints)",
    ),
    "zero2-from-recipe": ({"deepspeed": {"zero_optimization": {"stage": 2}}}, None, "ZeRO-2"),
    "zero3-from-accelerate-config": ({}, "zero3.yaml", "DeepSpeed ZeRO-3"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_train_resume_and_match_one_process(
    mode: str,
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    cache: Path,
    one_process: Path,
) -> None:
    if "zero" in mode:
        pytest.importorskip("deepspeed")
    additions, config, shown = MODES[mode]
    env = extra_env(cache)
    if config is not None:
        env.update(accelerate_worker_env(REPO / "configs" / "accelerate" / config, 2))
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path / "r.yaml",
        tiny_model_dir,
        demo_train_path,
        out,
        **TWO_PROCESSES,
        **additions,
    )
    if mode == "ddp":  # plain DDP needs no shim: `cpo train --launch 2` hands off to torchrun
        done = cpo_process("train", str(recipe), "--launch", "2", env=env)
    else:
        done = torchrun(["train", str(recipe)], env, shim=True)
    assert done.exit_code == 0, done.stderr[-4000:]
    line = start_up_line(done.stdout)
    assert line.startswith("run: 2 processes on 1 machine | ")
    assert shown in line
    assert line.endswith(
        "batch: 2 pairs/device x 2 accumulation x 2 processes = 8 pairs per optimizer step"
    )
    assert done.stdout.count("model saved to") == 1

    # the same optimisation as one process with the same 8 pairs per step (NLL term included)
    assert losses(out) == pytest.approx(losses(one_process), rel=1e-5)
    assert max_diff(weights(out), weights(one_process)) < WEIGHT_TOL
    # a plain Hugging Face folder, gathered from the shards
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    final = weights(out)
    assert (
        max(float((p.detach() - final[k]).abs().max()) for k, p in loaded.state_dict().items())
        == 0.0
    )

    # resumed from its step-2 checkpoint: the same final weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    again = recipe_file(
        tmp_path / "again.yaml",
        tiny_model_dir,
        demo_train_path,
        resumed,
        **TWO_PROCESSES,
        **additions,
        resume_from_checkpoint="last",
    )
    if mode == "ddp":
        done = torchrun(["train", str(again)], env)
    else:
        done = torchrun(["train", str(again)], env, shim=True)
    assert done.exit_code == 0, done.stderr[-4000:]
    assert f"resumed from {resumed / 'checkpoint-2'} (step 2)" in done.stdout
    assert max_diff(weights(resumed), final) < 1e-7


def test_an_error_on_rank_1_reaches_the_user(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cache: Path
) -> None:
    """The data file exists on "rank 0's disk" only: rank 1's error is printed once, prefixed
    with its rank and host, and the whole job exits 1 at once (no rank waits on the other)."""
    (tmp_path / "rank0").mkdir()
    shutil.copy(demo_train_path, tmp_path / "rank0" / "train.jsonl")
    recipe = recipe_file(
        tmp_path / "r.yaml",
        tiny_model_dir,
        tmp_path / "rank${oc.env:RANK}" / "train.jsonl",
        tmp_path / "out",
    )
    done = torchrun(["train", str(recipe)], extra_env(cache))
    assert done.exit_code == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: [rank 1 on {socket.gethostname()}] data.train: dataset file not found: "
        f"{tmp_path / 'rank1' / 'train.jsonl'}"
    ]
    # no traceback from cpo's processes (torchrun's own report of the failed job follows)
    assert f'File "{REPO / "cpo_cli"}' not in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_save_on_each_node_writes_everything_on_both_machines(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cache: Path
) -> None:
    """Two "machines" (two torchrun agents, one process each, c10d rendezvous on localhost),
    each with its own disk (`output_dir` from NODE_DISK): each gets complete checkpoints and
    the final model, and each resumes from its own disk."""
    recipe = recipe_file(
        tmp_path / "r.yaml",
        tiny_model_dir,
        demo_train_path,
        Path("${oc.env:NODE_DISK}") / "out",
        **REFERENCE,
        save_on_each_node=True,
    )
    port = _free_port()

    def both_nodes(args: list[str]) -> list[subprocess.CompletedProcess[str]]:
        procs = []
        for node in (0, 1):
            disk = tmp_path / f"node{node}"
            disk.mkdir(exist_ok=True)
            launcher = [
                "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                "--rdzv_id", f"cpo-test-{port}",
            ]  # fmt: skip
            command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "cpo_cli"]
            procs.append(
                subprocess.Popen(
                    [*command, *args],
                    cwd=REPO,
                    env={**os.environ, **OFFLINE, **extra_env(cache, NODE_DISK=str(disk))},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        return results

    first, second = both_nodes(["train", str(recipe)])
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    assert "run: 2 processes on 2 machines" in first.stdout
    for node in (0, 1):
        out = tmp_path / f"node{node}" / "out"
        checkpoint = out / "checkpoint-2"
        assert (checkpoint / "trainer_state.json").is_file(), node
        assert (checkpoint / "model.safetensors").is_file()
        assert (checkpoint / "accelerate" / "optimizer.bin").is_file()
        assert (out / "model.safetensors").is_file() and (out / "recipe.yaml").is_file()
        assert not list(out.glob(".tmp-*"))
    node0, node1 = (weights(tmp_path / f"node{n}" / "out") for n in (0, 1))
    assert max_diff(node0, node1) == 0.0

    resumed = both_nodes(["train", str(recipe), "training.resume_from_checkpoint=last"])
    assert all(r.returncode == 0 for r in resumed), resumed[1].stderr[-3000:]
    assert "resumed from" in resumed[0].stdout
    assert max_diff(weights(tmp_path / "node1" / "out"), node1) < 1e-7


def test_resume_on_one_process_keeps_the_data_position(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    cache: Path,
    one_process: Path,
) -> None:
    """A 2-process checkpoint (2 x 2 pairs, step 2: 16 pairs done) resumed by 1 process with
    4 pairs per micro-batch continues at pair 16: the run then ends where the uninterrupted
    one-process run ends. A batch that no whole number of micro-batches fits is refused."""
    out = tmp_path / "two"
    recipe = recipe_file(tmp_path / "r.yaml", tiny_model_dir, demo_train_path, out, **TWO_PROCESSES)
    done = torchrun(["train", str(recipe)], extra_env(cache))
    assert done.exit_code == 0, done.stderr[-3000:]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    resume = [
        "train",
        str(recipe),
        f"training.output_dir={resumed}",
        "training.resume_from_checkpoint=last",
    ]

    refused = cpo_process(*resume, "training.per_device_train_batch_size=3", env=extra_env(cache))
    assert refused.exit_code == 1
    assert "16 pairs into its epoch" in refused.stderr and "Traceback" not in refused.stderr

    done = cpo_process(*resume, "training.per_device_train_batch_size=4", env=extra_env(cache))
    assert done.exit_code == 0, done.stderr[-3000:]
    assert "warning: resuming with 1 process x 4 pairs per micro-batch" in done.stderr
    assert max_diff(weights(resumed), weights(one_process)) < WEIGHT_TOL
    assert losses(resumed)[-1] == pytest.approx(losses(one_process)[-1], rel=1e-5)


def test_accelerate_launch_that_starts_one_process_says_so(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cache: Path
) -> None:
    """On a CPU machine `accelerate launch --num_processes 2` starts one process, and an FSDP
    request falls back to no sharding: both are warnings, and the start-up line tells the
    truth."""
    recipe = recipe_file(
        tmp_path / "r.yaml",
        tiny_model_dir,
        demo_train_path,
        tmp_path / "out",
        max_steps=1,
        save_strategy="no",
        fsdp="full_shard auto_wrap",
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "cpo_cli", "train", str(recipe),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **OFFLINE, **extra_env(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = start_up_line(done.stdout)
    assert line.startswith("run: 1 process on 1 machine | single process (cpu) | ")
    assert "asked for 2 processes but 1 started" in done.stderr
    assert "torchrun --nproc_per_node 2 -m cpo_cli train" in done.stderr
    assert (
        "FSDP was asked for (by training.fsdp) but this run is single process (cpu)" in done.stderr
    )


def test_deepspeed_batch_settings_that_contradict_the_recipe_are_refused(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cache: Path
) -> None:
    """Left to accelerate, an accelerate config's DeepSpeed accumulation would silently replace
    the recipe's: cpo refuses before any process loads the model."""
    pytest.importorskip("deepspeed")
    recipe = recipe_file(
        tmp_path / "r.yaml", tiny_model_dir, demo_train_path, tmp_path / "out", **TWO_PROCESSES
    )
    env = extra_env(
        cache,
        ACCELERATE_USE_DEEPSPEED="true",
        ACCELERATE_DEEPSPEED_ZERO_STAGE="2",
        ACCELERATE_GRADIENT_ACCUMULATION_STEPS="4",
    )
    done = cpo_process("train", str(recipe), env=env)
    assert done.exit_code == 1
    assert (
        "the accelerate config's DeepSpeed settings (deepspeed_config): gradient_accumulation_steps"
        " is 4 but training.gradient_accumulation_steps is 2" in done.stderr
    )
