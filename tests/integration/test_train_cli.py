"""`cpo train` through the real CLI: a subprocess run on the tiny model, user errors, Ctrl-C's
exit code, `accelerate launch -m cpo_cli train`, and the quickstart on SmolLM2 (slow)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import TINY_RUN, FakeHub, Result, cpo_process, write_recipe

Cli = Callable[..., Result]


def tiny_recipe(
    path: Path,
    model_dir: Path,
    out: Path,
    train: Path,
    *,
    eval: Path | None = None,
    eval_rows: int | None = None,
    **training: Any,
) -> Path:
    """A two-step run on the first 8 demo pairs (`TINY_RUN`, then `training`), written to
    `path`."""
    return write_recipe(
        path,
        model_dir,
        train=train,
        eval=eval,
        out=out,
        train_rows=8,
        eval_rows=eval_rows,
        **{**TINY_RUN, **training},
    )


def test_cpo_train_subprocess(tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_model_dir, out, demo_train_path)
    done = cpo_process("train", str(recipe), "training.max_steps=3", "training.beta=0.2")
    assert done.exit_code == 0, done.stderr
    assert "step 3/3" in done.stdout and "rewards/accuracies" in done.stdout
    assert f"model saved to {out}" in done.stdout
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "beta: 0.2" in (out / "recipe.yaml").read_text()
    assert not list(out.glob(".tmp-*"))


def test_a_mixture_of_sources(tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    """`data.train` as a list with weights: each source prepared with its own settings, its
    counts printed, the pairs combined."""
    recipe = tiny_recipe(
        tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", demo_data_dir / "demo_train.jsonl"
    )
    mixture = (
        f"data.train=[{{path: {demo_data_dir / 'demo_train.jsonl'}, max_rows: 8}},"
        f" {{path: {demo_data_dir / 'demo_messy.jsonl'}, weight: 2}}]"
    )
    done = cpo_process("train", str(recipe), mixture, "training.max_steps=1")
    assert done.exit_code == 0, done.stderr
    assert "data.train[0]: 8 pairs from" in done.stdout
    assert "data.train[1]: 3 pairs from" in done.stdout and "12 dropped" in done.stdout
    assert "data.train: 14 pairs in the mixture (8 from" in done.stdout


def test_quiet_prints_only_the_summary(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", demo_train_path)
    done = cpo_process("train", str(recipe), "--quiet")
    assert done.exit_code == 0, done.stderr
    assert "step 1/2" not in done.stdout and "data.train" not in done.stdout
    assert "model saved to" in done.stdout


def test_a_user_mistake_is_one_line_and_exit_1(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    recipe = tiny_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        tmp_path / "out",
        demo_train_path,
        resume_from_checkpoint=str(tmp_path / "missing"),
    )
    done = cpo_process("train", str(recipe))
    assert done.exit_code == 1
    assert "resume_from_checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_interrupt_exits_130_naming_the_last_checkpoint(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import cpo_cli.engine.loop as loop

    def interrupted(loaded: Any, **kwargs: Any) -> Any:
        raise loop.TrainingInterrupted(
            "training interrupted at step 3; last complete checkpoint: out/checkpoint-2"
        )

    monkeypatch.setattr(loop, "train", interrupted)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: x}\n", encoding="utf-8")
    assert cli("train", str(recipe)).exit_code == 130


def test_push_to_hub_uploads_the_output_and_never_writes_the_token(
    cli: Cli,
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cpo_cli.hub as hub

    uploaded: list[Any] = []
    monkeypatch.setattr(hub, "upload", lambda plan, **kw: uploaded.append(plan) or "http://x")
    out = tmp_path / "out"
    recipe = tiny_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        out,
        demo_train_path,
        push_to_hub=True,
        hub_model_id="me/tiny-cpo",
        hub_token="hf_abcdefghijklmnopqrstuvwxyz",
    )
    assert cli("train", str(recipe), "--quiet").exit_code == 0
    (plan,) = uploaded
    assert plan.settings.repo_id == "me/tiny-cpo"
    assert plan.settings.token == "hf_abcdefghijklmnopqrstuvwxyz"
    assert "model.safetensors" in {f.path_in_repo for f in plan.files}
    for file in out.rglob("*"):
        if file.is_file() and file.suffix in (".yaml", ".json", ".jsonl"):
            assert "hf_abcdefghijklmnopqrstuvwxyz" not in file.read_text(), file


def test_push_to_hub_with_a_bare_repo_name_pushes_everything_to_the_token_owner(
    cli: Cli, fake_hub: FakeHub, tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    """`hub_model_id: my-run` without a namespace: the checkpoint push and the final push both
    go to the token owner's `alice/my-run` (the final push used to refuse the bare name)."""
    out = tmp_path / "out"
    recipe = tiny_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        out,
        demo_train_path,
        save_strategy="steps",
        save_steps=2,
        push_to_hub=True,
        hub_model_id="my-run",
        hub_token="hf_abcdefghijklmnopqrstuvwxyz",
    )
    result = cli("train", str(recipe), "--quiet")
    assert result.exit_code == 0, result.output
    commits = [call for call in fake_hub.calls() if "/commit/" in call]
    assert commits == ["POST /api/models/alice/my-run/commit/main"] * 2  # checkpoint-2, final
    assert "/alice/my-run/commit/" in result.stdout
    final = fake_hub.commit_lines()
    assert {"model.safetensors", "README.md"} <= {
        line["value"]["path"] for line in final if line["key"] == "file"
    }


def test_accelerate_launch_runs_the_module(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path
) -> None:
    """The seed's `accelerate launch train_cpo.py` becomes `accelerate launch -m cpo_cli train`."""
    out = tmp_path / "out"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_model_dir, out, demo_train_path)
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    done = cpo_process("train", str(recipe), launcher=launcher)
    assert done.exit_code == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file()


@pytest.mark.distributed
def test_two_processes(tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path) -> None:
    """Two CPU processes (torchrun; `accelerate launch` needs mpirun for multi-CPU): one log,
    one set of outputs, and each process's RNG state in the checkpoint."""
    out = tmp_path / "out"
    recipe = tiny_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        out,
        demo_train_path,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=2,
    )
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    done = cpo_process("train", str(recipe), launcher=launcher)
    assert done.exit_code == 0, done.stderr[-3000:]
    assert done.stdout.count("model saved to") == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["epoch"] == 0.5  # 8 pairs / (2 processes x 2) = 2 steps per epoch
    state = out / "checkpoint-2" / "accelerate"
    assert {p.name for p in state.glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }


def test_two_process_evaluation_scores_each_pair_once(
    tiny_model_dir: Path, demo_train_path: Path, demo_eval_path: Path, tmp_path: Path
) -> None:
    """5 eval pairs over 2 processes (3 + 2, batches of 2): the per-pair means equal one
    process's, the NLL term too (one token-weighted mean over every evaluated pair)."""
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        recipe = tiny_recipe(
            tmp_path / f"r{processes}.yaml",
            tiny_model_dir,
            out,
            demo_train_path,
            max_steps=1,
            learning_rate=0.0,
            cpo_alpha=1.0,
            eval_strategy="steps",
            eval_steps=1,
            eval_on_start=True,
            per_device_eval_batch_size=2,
            eval=demo_eval_path,
            eval_rows=5,
        )
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
        ]
        done = cpo_process("train", str(recipe), launcher=launcher if processes == 2 else None)
        assert done.exit_code == 0, done.stderr[-3000:]
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        results[processes] = next(r for r in records if "eval_loss" in r)
    keys = ("eval_loss", "eval_nll_loss", "eval_rewards/accuracies", "eval_logps/chosen")
    for key in keys:
        assert results[2][key] == pytest.approx(results[1][key], rel=1e-5), key


@pytest.mark.slow
@pytest.mark.ci
def test_quickstart_learns(tmp_path: Path) -> None:
    """The README's main job on SmolLM2-135M-Instruct: held-out accuracy reaches 0.95, and the
    tuned model's greedy answers to the 60 held-out questions are at least 15 points more
    often right than the base model's, at a sane length (`cpo eval --compare`)."""
    from cpo_cli.assets.smollm2 import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except Exception as exc:  # the package holding the GGUF file is optional
        pytest.skip(str(exc))
    out = tmp_path / "quickstart"
    done = cpo_process(
        "train",
        "recipes/quickstart.yaml",
        f"training.output_dir={out}",
        "training.save_strategy='no'",
        timeout=3600,
    )
    assert done.exit_code == 0, done.stderr[-3000:]
    evals = [
        r
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "eval_loss" in r
    ]
    start, end = evals[0], evals[-1]
    assert start["step"] == 0 and end["step"] == 38
    assert end["eval_rewards/accuracies"] >= 0.95
    assert end["eval_rewards/margins"] > start["eval_rewards/margins"] + 0.2

    done = cpo_process(
        "eval",
        "recipes/quickstart.yaml",
        "--model",
        str(out),
        "--compare",
        "builtin:smollm2-135m-instruct",
        "--generate",
        "60",
        "--generations-out",
        str(tmp_path / "generations.jsonl"),
        "--json",
        "-",
        "--fail-under",
        "eval_rewards/accuracies=0.95",
        "--fail-over",
        "gen/length_ratio=2",
        timeout=3600,
    )
    assert done.exit_code == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    tuned, base = report["metrics"], report["compare"]["metrics"]
    assert tuned["eval_gen/num_samples"] == 60
    assert tuned["eval_gen/answer_accuracy"] >= base["eval_gen/answer_accuracy"] + 0.15
    assert 0.5 <= tuned["eval_gen/length_ratio"] <= 2


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo", "alphapo"])
def test_every_loss_trains_smollm2(loss_type: str, tmp_path: Path) -> None:
    """Each loss a few steps on the real model: finite numbers, weights saved."""
    from cpo_cli.assets.smollm2 import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except Exception as exc:
        pytest.skip(str(exc))
    out = tmp_path / loss_type
    extra = ["training.cpo_alpha=0.0"] if loss_type in ("simpo", "alphapo") else []
    if loss_type == "alphapo":
        extra.append("training.alpha=0.25")
    done = cpo_process(
        "train",
        "recipes/quickstart.yaml",
        f"training.output_dir={out}",
        f"training.loss_type={loss_type}",
        "training.max_steps=2",
        "training.save_strategy='no'",
        "training.eval_on_start=false",
        "training.eval_strategy='no'",
        "data.train.max_rows=16",
        "training.logging_steps=1",
        *extra,
        timeout=1800,
    )
    assert done.exit_code == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(v == v for r in records for v in r.values())  # no NaN
    assert (out / "model.safetensors").is_file()
