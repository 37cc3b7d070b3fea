"""The shipped launch files: every accelerate config under configs/accelerate loads with
accelerate's own config classes and gives the workers the environment cpo reads as intended;
the SLURM script is valid bash, is the one docs/distributed.md shows, and builds the right
torchrun / accelerate launch commands (run with stand-ins for srun and scontrol)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "accelerate").rglob("*.yaml"))
SBATCH = REPO / "configs" / "slurm" / "train.sbatch"

EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", None),
    "fsdp2.yaml": ("FSDP", "fsdp"),
    "zero2.yaml": ("DEEPSPEED", "deepspeed"),
    "zero3.yaml": ("DEEPSPEED", "deepspeed"),
}


def test_every_config_is_known() -> None:
    assert {p.name for p in CONFIGS} == set(EXPECTED)


def worker_env(config: Path) -> dict[str, str]:
    """The environment accelerate's GPU launcher gives each worker for this config."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(config), "--num_processes", "2", "x.py"]
    args, defaults, precision_from_config = _validate_launch_command(
        launch_command_parser().parse_args(argv)
    )
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] * precision_from_config)
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_accelerates_classes(config: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    from cpo_cli.engine.distributed import read_launcher

    loaded = load_config_from_file(str(config))
    assert isinstance(loaded, ClusterConfig)
    kind, sharding = EXPECTED[config.name]
    assert str(loaded.distributed_type).rsplit(".", 1)[-1] == kind
    # precision comes from the recipe; the config must not ask for another
    assert loaded.mixed_precision == "no"
    assert config.read_text(encoding="utf-8").startswith("#"), "say what it is for"
    if config.name == "fsdp2.yaml":
        assert loaded.fsdp_config["fsdp_version"] == 2
        assert loaded.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if config.name.startswith("zero"):
        assert loaded.deepspeed_config["zero_stage"] == int(config.name[4])
    if config.name == "zero3.yaml":
        assert loaded.deepspeed_config["zero3_save_16bit_model"] is True

    asked = read_launcher(worker_env(config), parent_argv=[])
    assert asked.fsdp == (sharding == "fsdp")
    assert asked.deepspeed == (sharding == "deepspeed")
    assert asked.mixed_precision is None


@pytest.mark.parametrize("name", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_configs_get_the_recipes_values(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accelerate's DeepSpeed plugin from the config's worker environment, with every value cpo
    owns filled in from the recipe (nothing left "auto" that accelerate would guess)."""
    pytest.importorskip("deepspeed")
    from cpo_cli.engine.distributed import launcher_deepspeed_plugin
    from cpo_cli.recipe import TrainingConfig

    for key, value in worker_env(REPO / "configs" / "accelerate" / name).items():
        monkeypatch.setenv(key, value)
    training = TrainingConfig(
        per_device_train_batch_size=3, gradient_accumulation_steps=2, max_grad_norm=0.7
    )
    plugin = launcher_deepspeed_plugin(training)
    config = plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.7
    assert config["zero_optimization"]["stage"] == int(name[4])
    if name == "zero3.yaml":
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert plugin.zero3_init_flag is True


# --------------------------------------------------------------------------- SLURM


def test_sbatch_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_docs_show_the_shipped_script() -> None:
    doc = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
    assert SBATCH.read_text(encoding="utf-8") in blocks


def _stand_ins(bin_dir: Path, log: Path) -> None:
    """scontrol prints two hosts; srun (its one option dropped) runs its command once per node
    with SLURM_NODEID set;
    torchrun and accelerate write the arguments they got."""
    scripts = {
        "scontrol": 'printf "node-a\\nnode-b\\n"\n',
        "srun": 'shift\nfor id in 0 1; do SLURM_NODEID=$id "$@" || exit $?; done\n',
        "torchrun": f'echo "torchrun $*" >> {log}\n',
        "accelerate": f'echo "node $SLURM_NODEID: accelerate $*" >> {log}\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sbatch_builds_the_launch_commands(launcher: str, tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    log = tmp_path / "launched.txt"
    _stand_ins(tmp_path, log)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_GPUS_ON_NODE": "4",
        "LAUNCHER": launcher,
        "ACCELERATE_CONFIG": "configs/accelerate/fsdp2.yaml",
    }
    done = subprocess.run(
        ["bash", str(SBATCH), "recipes/simpo.yaml", "training.max_steps=10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "2 nodes x 4 processes" in done.stdout
    lines = log.read_text().splitlines()
    if launcher == "torchrun":
        expected = (
            "torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint "
            "node-a:29500 --rdzv_id 4242 -m cpo_cli train recipes/simpo.yaml "
            "training.max_steps=10"
        )
        assert lines == [expected, expected]
    else:
        assert lines == [
            f"node {node}: accelerate launch --config_file configs/accelerate/fsdp2.yaml "
            f"--num_machines 2 --machine_rank {node} --num_processes 8 --main_process_ip "
            "node-a --main_process_port 29500 -m cpo_cli train recipes/simpo.yaml "
            "training.max_steps=10"
            for node in (0, 1)
        ]


def test_sbatch_without_a_recipe_says_how_to_call_it(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: sbatch" in done.stderr


def test_gpu_device_check_is_valid_bash_and_skips_without_gpus(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "device_check_distributed.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("GPUs here: run the script itself")
    import sys

    venv = Path(sys.executable).parent.parent
    out = tmp_path / "report.md"
    env = {**os.environ, "VENV": str(venv), "DEVICE_CHECK_DISTRIBUTED_OUT": str(out)}
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "| all | skipped | 0 | needs 2+ CUDA GPUs" in out.read_text()
