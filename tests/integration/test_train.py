"""End-to-end training on the tiny models: every loss, accumulation, exact resume, checkpoint
rotation, best model, metrics.jsonl, trackers, LoRA and encoder-decoder. Each run is a few
optimizer steps on a handful of demo pairs (seconds on a CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from support import TINY_RUN, recipe_dict

TRAIN_KEYS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "learning_rate",
    "grad_norm",
    "epoch",
    "tokens/s",
    "tflops/s",
}
EVAL_KEYS = {
    f"eval_{k}"
    for k in TRAIN_KEYS - {"learning_rate", "grad_norm", "epoch", "tokens/s", "tflops/s"}
}


pytestmark = pytest.mark.usefixtures("private_cache")  # prepared pairs stay out of ~/.cache

#: the tiny runs here: two optimizer steps of four pairs, short lengths (128 / 64 tokens)
RUN = {
    **TINY_RUN,
    "per_device_eval_batch_size": 8,
    "learning_rate": 1e-3,
    "disable_tqdm": True,
    "max_length": 128,
    "max_prompt_length": 64,
}


def make_recipe(
    model_dir: Path,
    out: Path,
    demo_train: Path,
    demo_eval: Path | None = None,
    *,
    train_rows: int = 16,
    peft: dict[str, Any] | None = None,
    **training: Any,
) -> Any:
    from cpo_cli.recipe import load_recipe_dict

    data = recipe_dict(
        model_dir,
        train=demo_train,
        eval=demo_eval,
        out=out,
        train_rows=train_rows,
        eval_rows=8,
        peft=peft,
        **{**RUN, **training},
    )
    return load_recipe_dict(data)


def run(loaded: Any) -> Any:
    from cpo_cli.engine.loop import train

    return train(loaded, show_progress=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo", "alphapo"])
def test_every_loss_type_trains(
    loss_type: str, tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    extra: dict[str, Any] = {"loss_type": loss_type}
    if loss_type in ("simpo", "alphapo"):
        extra["cpo_alpha"] = 0.0
    if loss_type == "alphapo":
        extra["alpha"] = 0.25
    before = weights(tiny_model_dir)
    result = run(make_recipe(tiny_model_dir, tmp_path / "out", demo_train_path, **extra))
    assert result.global_step == 2
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert set(record) == TRAIN_KEYS | {"step"}
        assert all(isinstance(v, float) and v == v for k, v in record.items() if k != "step")
    after = weights(tmp_path / "out")
    assert max_abs_diff(before, after) > 0  # it learned something
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    assert "loss_type: " + loss_type in (tmp_path / "out" / "recipe.yaml").read_text()
    summary = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert summary["global_step"] == 2 and "loss" in summary["metrics"]


def test_gradient_accumulation_matches_a_larger_batch(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    """2 micro-batches of 2 pairs accumulate to the same step as one batch of 4 (the CPO loss
    is a mean over pairs; cpo_alpha=0 keeps the token-mean NLL out of it). Plain SGD, so the
    comparison is not blurred by Adam's normalisation of near-zero gradients."""
    common = {"max_steps": 3, "cpo_alpha": 0.0, "optim": "sgd", "learning_rate": 0.5}
    run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "big",
            demo_train_path,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            **common,
        )
    )
    run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "acc",
            demo_train_path,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            **common,
        )
    )
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "acc")) < 1e-5
    big = read_jsonl(tmp_path / "big" / "metrics.jsonl")
    acc = read_jsonl(tmp_path / "acc" / "metrics.jsonl")
    assert [r["loss"] for r in big] == pytest.approx([r["loss"] for r in acc], rel=1e-5)


def test_the_nll_term_is_one_token_mean_over_the_optimizer_step(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    """With the NLL term on (cpo_alpha 1) and `average_tokens_across_devices` (the default),
    2 micro-batches of 2 pairs give the same step as one batch of 4: the NLL is weighted by
    chosen tokens over the whole step. TRL's per-micro-batch mean (false) does not."""
    common = {"max_steps": 3, "cpo_alpha": 1.0, "optim": "sgd", "learning_rate": 0.5}
    shapes = {
        "big": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
        "acc": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    }
    for name, shape in shapes.items():
        run(make_recipe(tiny_model_dir, tmp_path / name, demo_train_path, **shape, **common))
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "acc")) < 1e-5
    big = read_jsonl(tmp_path / "big" / "metrics.jsonl")
    acc = read_jsonl(tmp_path / "acc" / "metrics.jsonl")
    for key in ("loss", "nll_loss"):
        assert [r[key] for r in big] == pytest.approx([r[key] for r in acc], rel=1e-5), key

    trl = {**shapes["acc"], **common, "average_tokens_across_devices": False}
    run(make_recipe(tiny_model_dir, tmp_path / "trl", demo_train_path, **trl))
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "trl")) > 1e-4


def test_a_short_last_window_is_averaged_over_its_own_batches(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    """16 pairs in batches of 4 with accumulation 3: windows of 3 and 1 micro-batches."""
    result = run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "out",
            demo_train_path,
            gradient_accumulation_steps=3,
            num_train_epochs=1,
            max_steps=-1,
        )
    )
    assert result.global_step == 2
    assert read_jsonl(tmp_path / "out" / "metrics.jsonl")[-1]["epoch"] == 1.0


def test_resume_after_interrupt_ends_with_the_same_weights(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped by Ctrl-C at step 5, two steps after the step-3 checkpoint (mid-epoch: 4 steps
    per epoch), then resumed: the final weights equal those of an uninterrupted run, and
    metrics.jsonl holds each step once."""
    import cpo_cli.engine.loop as loop
    from cpo_cli.errors import EXIT_INTERRUPTED

    common = {
        "max_steps": 6,
        "gradient_accumulation_steps": 2,
        "save_strategy": "steps",
        "save_steps": 3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
        "neftune_noise_alpha": 5.0,  # NEFTune noise: the RNG state must resume too
        "train_rows": 32,
    }
    run(make_recipe(tiny_model_dir, tmp_path / "whole", demo_train_path, **common))

    real_log = loop._log

    def log_then_interrupt(run_: Any, state: Any, *args: Any) -> None:
        real_log(run_, state, *args)
        if state.global_step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_log", log_then_interrupt)
    out = tmp_path / "split"
    with pytest.raises(loop.TrainingInterrupted) as caught:
        run(make_recipe(tiny_model_dir, out, demo_train_path, **common))
    assert caught.value.exit_code == EXIT_INTERRUPTED
    assert str(out / "checkpoint-3") in caught.value.message
    assert not list(out.glob(".tmp-*"))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(loop, "_log", real_log)

    result = run(
        make_recipe(tiny_model_dir, out, demo_train_path, resume_from_checkpoint="last", **common)
    )
    assert result.global_step == 6
    assert max_abs_diff(weights(tmp_path / "whole"), weights(out)) < 1e-6
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_save_total_limit_keeps_the_newest(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    out = tmp_path / "out"
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            max_steps=4,
            save_strategy="steps",
            save_steps=1,
            save_total_limit=2,
        )
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    # a fresh run in the same folder starts a new metrics.jsonl
    run(make_recipe(tiny_model_dir, out, demo_train_path, max_steps=1))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["batches_done_in_epoch"] == 4
    assert (out / "checkpoint-4" / "accelerate" / "optimizer.bin").is_file()
    assert "output_dir" in (out / "checkpoint-4" / "recipe.yaml").read_text()


def test_push_to_hub_pushes_each_saved_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`push_to_hub` hands every finished checkpoint to the Hub layer (which applies
    hub_strategy and is tested against a loopback server in test_push_hub.py)."""
    from cpo_cli import hub

    pushed: list[tuple[str, str]] = []
    monkeypatch.setattr(
        hub,
        "push_checkpoint",
        lambda path, training, **_: pushed.append((Path(path).name, training.hub_strategy)),
    )
    out = tmp_path / "out"
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            max_steps=2,
            save_strategy="steps",
            save_steps=1,
            push_to_hub=True,
            hub_model_id="someone/tiny-cpo",
            hub_strategy="checkpoint",
        )
    )
    assert pushed == [("checkpoint-1", "checkpoint"), ("checkpoint-2", "checkpoint")]


def test_save_only_model_writes_no_optimizer(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    out = tmp_path / "out"
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            save_strategy="steps",
            save_steps=2,
            save_only_model=True,
        )
    )
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert not (out / "checkpoint-2" / "accelerate").exists()


def test_load_best_model_at_end(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    """Evaluated and saved every step; the best eval_rewards/margins checkpoint survives
    rotation and its weights are the final model."""
    out = tmp_path / "out"
    result = run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            demo_eval_path,
            max_steps=4,
            learning_rate=3e-3,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model="rewards/margins",
        )
    )
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4]
    assert set(evals[0]) == EVAL_KEYS | {"step"}
    best = max(evals, key=lambda r: r["eval_rewards/margins"])
    assert result.best_checkpoint == str(out / f"checkpoint-{best['step']}")
    kept = {p.name for p in out.glob("checkpoint-*")}
    assert f"checkpoint-{best['step']}" in kept and len(kept) <= 2
    assert max_abs_diff(weights(out), weights(Path(result.best_checkpoint))) == 0


def test_eval_on_start_and_delay(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    out = tmp_path / "out"
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            demo_eval_path,
            max_steps=4,
            eval_strategy="steps",
            eval_steps=1,
            eval_delay=3,
            eval_on_start=True,
            logging_strategy="no",
        )
    )
    evals = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r]
    assert evals == [0, 3, 4]


def test_missing_tracker_package_fails_before_training(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.errors import DependencyMissingError

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(DependencyMissingError, match="wandb"):
        run(make_recipe(tiny_model_dir, tmp_path / "out", demo_train_path, report_to="wandb"))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
def test_tensorboard_sink_writes_events(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    out = tmp_path / "out"
    run(make_recipe(tiny_model_dir, out, demo_train_path, report_to="tensorboard"))
    assert list((out / "runs").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("merge", [False, True])
def test_lora_run(merge: bool, tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path) -> None:
    out = tmp_path / "out"
    peft = {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "merge_at_end": merge,
    }
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            peft=peft,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=1,
            max_steps=2,
        )
    )
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file()
    if merge:
        merged = weights(out)
        assert not any("lora" in k for k in merged)
        assert max_abs_diff(weights(tiny_model_dir), merged) > 0
    else:
        assert (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()


def test_lora_resume_continues(tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path) -> None:
    out = tmp_path / "out"
    peft = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            peft=peft,
            save_strategy="steps",
            save_steps=1,
            max_steps=2,
        )
    )
    result = run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            peft=peft,
            max_steps=3,
            resume_from_checkpoint=str(out / "checkpoint-2"),
        )
    )
    assert result.global_step == 3


def test_encoder_decoder_trains(
    tiny_seq2seq_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(
        make_recipe(
            tiny_seq2seq_dir,
            out,
            demo_train_path,
            demo_eval_path,
            eval_strategy="steps",
            eval_steps=2,
            max_completion_length=32,
        )
    )
    assert result.global_step == 2
    assert "eval_rewards/accuracies" in result.metrics
    assert json.loads((out / "config.json").read_text())["is_encoder_decoder"] is True


def test_generate_during_eval_writes_samples(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    out = tmp_path / "out"
    run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            demo_eval_path,
            max_steps=1,
            eval_strategy="steps",
            eval_steps=1,
            generate_during_eval=True,
            max_completion_length=8,
        )
    )
    samples = read_jsonl(out / "eval_samples.jsonl")
    assert len(samples) == 8  # every eval pair (there are fewer than 16)
    assert set(samples[0]) == {
        "step",
        "prompt",
        "generation",
        "chosen",
        "rejected",
        "tokens",
        "finished",
        "answer_correct",
    }
    assert all(0 <= s["tokens"] <= 8 for s in samples)
    # the prompt as written, taken back out of the template; the task metrics logged with it
    assert samples[0]["prompt"].startswith("Question: ")
    evaluation = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r][-1]
    assert evaluation["eval_gen/num_samples"] == 8
    assert evaluation["eval_gen/length"] == pytest.approx(sum(s["tokens"] for s in samples) / 8)


def test_bf16_gradient_checkpointing_and_length_grouping(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    """The speed/memory options together: bf16 autocast (on the CPU too), activation
    checkpointing, batches grouped by length, decoupled weight decay and a cosine schedule."""
    out = tmp_path / "out"
    result = run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            bf16=True,
            gradient_checkpointing=True,
            group_by_length=True,
            weight_decay=0.1,
            lr_scheduler_type="cosine",
        )
    )
    assert result.global_step == 2
    records = read_jsonl(out / "metrics.jsonl")
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in records)
    assert max_abs_diff(weights(tiny_model_dir), weights(out)) > 0


def test_unknown_best_metric_fails_before_training(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    from cpo_cli.errors import RecipeError

    with pytest.raises(RecipeError) as caught:
        run(
            make_recipe(
                tiny_model_dir,
                tmp_path / "out",
                demo_train_path,
                demo_eval_path,
                eval_strategy="steps",
                metric_for_best_model="accuracy",
            )
        )
    assert "rewards/accuracies" in caught.value.problems[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_torch_compile_saves_plain_weight_names_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path
) -> None:
    out = tmp_path / "out"
    common = {"torch_compile": True, "save_strategy": "steps", "save_steps": 2}
    run(make_recipe(tiny_model_dir, out, demo_train_path, **common))
    assert weights(out).keys() == weights(tiny_model_dir).keys()  # no "_orig_mod." prefix
    result = run(
        make_recipe(
            tiny_model_dir,
            out,
            demo_train_path,
            max_steps=3,
            resume_from_checkpoint="last",
            **common,
        )
    )
    assert result.global_step == 3


@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])
def test_token_budget_micro_batches_of_different_sizes_make_one_exact_step(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, cpo_alpha: float
) -> None:
    """6 pairs as micro-batches of 4 and 2 (`max_tokens_per_batch` with a 4-pair cap),
    accumulated in one window, give the step of one batch of all 6: each micro-batch's loss
    counts by its share of the step's pairs, and the NLL term (`cpo_alpha`, token-weighted
    over the step by default) by the step's chosen tokens."""
    common = {"max_steps": 1, "cpo_alpha": cpo_alpha, "optim": "sgd", "learning_rate": 0.5}
    run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "budget",
            demo_train_path,
            train_rows=6,
            per_device_train_batch_size=4,
            max_tokens_per_batch=100_000,
            gradient_accumulation_steps=2,
            **common,
        )
    )
    run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "big",
            demo_train_path,
            train_rows=6,
            per_device_train_batch_size=6,
            **common,
        )
    )
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "budget")) < 1e-5


def test_auto_find_batch_size_halves_the_micro_batch_and_keeps_the_effective_batch(
    tiny_model_dir: Path,
    tmp_path: Path,
    demo_train_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An out-of-memory error (injected: no accelerator here) on micro-batches above 2 pairs:
    the run starts again with 2 pairs x 2 accumulation and ends where such a run ends."""
    import torch

    from cpo_cli.engine import objective as step

    real = step.batch_loss_and_metrics
    seen: list[int] = []

    def oom_above_two_pairs(model: Any, batch: Any, training: Any, **weighting: Any) -> Any:
        pairs = int(batch["target_seqs"].max()) // 2 + 1
        seen.append(pairs)
        if pairs > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, training, **weighting)

    monkeypatch.setattr(step, "batch_loss_and_metrics", oom_above_two_pairs)
    common = {"max_steps": 2, "cpo_alpha": 0.0, "optim": "sgd", "learning_rate": 0.5}
    result = run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "auto",
            demo_train_path,
            per_device_train_batch_size=4,
            auto_find_batch_size=True,
            **common,
        )
    )
    assert result.global_step == 2 and seen[0] == 4 and set(seen[1:]) == {2}
    assert (
        "per_device_train_batch_size=2 and gradient_accumulation_steps=2" in capsys.readouterr().err
    )
    monkeypatch.setattr(step, "batch_loss_and_metrics", real)
    run(
        make_recipe(
            tiny_model_dir,
            tmp_path / "plain",
            demo_train_path,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            **common,
        )
    )
    assert max_abs_diff(weights(tmp_path / "plain"), weights(tmp_path / "auto")) < 1e-6
    with pytest.raises(torch.OutOfMemoryError):  # without the switch the error propagates
        monkeypatch.setattr(step, "batch_loss_and_metrics", oom_above_two_pairs)
        run(make_recipe(tiny_model_dir, tmp_path / "off", demo_train_path, **common))
