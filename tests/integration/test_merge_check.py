"""LoRA merges are checked by what the merged model computes (engine.merge_check): a good merge
passes with its numbers, a broken one (wrong delta, double-wrapped keys, a dtype that overflows)
is refused, and a refused merge at the end of training leaves the adapter saved."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpo_cli.engine.merge_check import TOLERANCE_NATS_PER_TOKEN, MergeRefused, merge_and_check
from cpo_cli.merge_report import REPORT_FILE, read_report

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer_dir: Path, demo_eval_path: Path, private_cache: Path) -> Any:
    from support import make_training

    from cpo_cli.engine.data import prepare_source
    from cpo_cli.engine.model import build_tokenizer
    from cpo_cli.recipe.schema import DataSource, ModelSection

    tokenizer = build_tokenizer(ModelSection(name_or_path=str(tiny_tokenizer_dir)))
    training = make_training(max_length=128, max_prompt_length=64)
    source = DataSource(path=str(demo_eval_path), max_rows=8)
    return prepare_source("eval", source, tokenizer, training, is_encoder_decoder=False)


def adapter_model(model_dir: Path, *, scale: float = 0.05) -> Any:
    """The tiny Llama with a LoRA adapter whose B matrices are not zero (a trained-like
    adapter that changes the outputs), fixed by a seed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, scale)
    return model


def settings(tokenizer_pad: int = 0) -> dict[str, Any]:
    return {"pad_token_id": tokenizer_pad, "layout": "pair_rows", "is_encoder_decoder": False}


def check(model: Any, pairs: Any, dtype: str | None = None) -> tuple[Any, Any]:
    return merge_and_check(
        model,
        pairs,
        collate_settings=settings(),
        chunk_size=256,
        pairs_from="data.eval",
        dtype=dtype,
    )


def logps(model: Any, pairs: Any) -> Any:
    import torch

    from cpo_cli.data.collate import collate_pairs
    from cpo_cli.engine.forward import sequence_logps

    with torch.no_grad():
        batch = collate_pairs([pairs[i] for i in range(4)], **settings())
        return sequence_logps(model.eval(), batch, chunk_size=256).logps


@pytest.fixture
def broken_merge(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """peft merges three times the adapter's delta (and unmerges the same, so an undone merge
    restores the weights): a merge that does not match the adapter."""
    from peft.tuners.lora import layer

    delta = layer.Linear.get_delta_weight
    monkeypatch.setattr(
        layer.Linear, "get_delta_weight", lambda self, adapter: 3 * delta(self, adapter)
    )
    yield


def test_a_good_merge_passes_with_its_numbers(tiny_model_dir: Path, pairs: Any) -> None:
    model = adapter_model(tiny_model_dir)
    expected = logps(model, pairs)
    merged, result = check(model, pairs)
    assert result.passed and result.pairs == 4 and result.pairs_from == "data.eval"
    assert result.dtype == result.reference_dtype == "float32"
    assert 0 <= result.merge_max_diff <= TOLERANCE_NATS_PER_TOKEN["float32"]
    assert result.max_diff == pytest.approx(result.merge_max_diff, abs=1e-6)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (logps(merged, pairs) - expected).abs().max() < 1e-3
    assert "passed" in result.summary() and "8 answers" in result.summary()


def test_a_cast_to_bfloat16_is_checked_in_that_dtype(tiny_model_dir: Path, pairs: Any) -> None:
    import torch

    merged, result = check(adapter_model(tiny_model_dir), pairs, dtype="bfloat16")
    assert merged.dtype == torch.bfloat16
    assert result.passed and result.dtype == "bfloat16" and result.reference_dtype == "float32"
    assert result.merge_max_diff <= TOLERANCE_NATS_PER_TOKEN["float32"]
    assert 0 < result.max_diff <= TOLERANCE_NATS_PER_TOKEN["bfloat16"]
    assert "saved as bfloat16" in result.summary()


def test_a_broken_merge_is_refused_and_undone(
    tiny_model_dir: Path, pairs: Any, broken_merge: None
) -> None:
    model = adapter_model(tiny_model_dir)
    expected = logps(model, pairs)
    with pytest.raises(MergeRefused) as info:
        check(model, pairs)
    refused = info.value
    assert refused.adapter_intact and not refused.check.passed
    assert refused.check.merge_max_diff > 10 * TOLERANCE_NATS_PER_TOKEN["float32"]
    assert "LoRA merge refused" in refused.message and "beyond the tolerance" in refused.message
    assert f"{refused.check.merge_max_diff:.2g}" in refused.message
    # the adapter model computes what it did before the attempt
    assert (logps(model, pairs) - expected).abs().max() < 1e-4
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_double_wrapped_adapter_keys_are_refused(tiny_model_dir: Path, pairs: Any) -> None:
    from peft import LoraConfig, get_peft_model

    inner = adapter_model(tiny_model_dir)
    twice = get_peft_model(inner, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(MergeRefused, match=r"wrapped twice \(e\.g\. base_model\.model\.base_model"):
        check(twice, pairs)


def test_a_dtype_that_overflows_is_refused(tiny_model_dir: Path, pairs: Any) -> None:
    import torch

    model = adapter_model(tiny_model_dir)
    with torch.no_grad():  # a weight beyond float16's range (65504)
        model.get_base_model().model.layers[0].input_layernorm.weight.mul_(7e4)
    with pytest.raises(MergeRefused) as info:
        check(model, pairs, dtype="float16")
    result = info.value.check
    assert not info.value.adapter_intact
    assert result.merge_max_diff <= TOLERANCE_NATS_PER_TOKEN["float32"]  # the merge was fine
    assert math.isinf(result.max_diff)
    assert "saved as float16 inf" in info.value.message


# ----------------------------------------------------------------------------- in training


def lora_recipe(model_dir: Path, out: Path, train: Path, evaluation: Path) -> Any:
    from support import recipe_dict

    from cpo_cli.recipe import load_recipe_dict

    peft = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    return load_recipe_dict(
        recipe_dict(
            model_dir,
            train=train,
            eval=evaluation,
            out=out,
            train_rows=16,
            eval_rows=8,
            peft={**peft, "merge_at_end": True},
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=3e-2,
            max_length=128,
            max_prompt_length=64,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
    )


def test_merge_at_end_is_checked_and_reported(
    tiny_model_dir: Path, tmp_path: Path, demo_train_path: Path, demo_eval_path: Path
) -> None:
    from cpo_cli.engine.loop import train

    out = tmp_path / "out"
    train(lora_recipe(tiny_model_dir, out, demo_train_path, demo_eval_path), show_progress=False)
    report = read_report(out)
    assert report is not None and report.passed and report.pairs_from == "data.eval"
    assert report.merge_max_diff <= TOLERANCE_NATS_PER_TOKEN["float32"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_a_refused_merge_at_end_keeps_the_adapter(
    tiny_model_dir: Path,
    tmp_path: Path,
    demo_train_path: Path,
    demo_eval_path: Path,
    broken_merge: None,
) -> None:
    from cpo_cli.engine.loop import train

    out = tmp_path / "out"
    with pytest.raises(MergeRefused, match="LoRA merge refused") as info:
        train(
            lora_recipe(tiny_model_dir, out, demo_train_path, demo_eval_path),
            show_progress=False,
        )
    assert info.value.adapter_intact
    assert (out / "adapter_model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    assert not (out / "model.safetensors").exists()
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["passed"] is False and report["merge_max_diff"] > report["merge_tolerance"]
