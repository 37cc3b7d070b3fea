"""`cpo eval` against TRL 1.16's own `CPOTrainer.evaluate()` on the same tiny model and pairs
(data that needs no truncation; an eval batch size that divides the pairs, since TRL averages
per-batch means; `average_tokens_across_devices: false`, TRL's per-batch NLL mean).
`eval_logits/*` differ by definition (TRL averages over every padded position, cpo over
answer-predicting ones; see `cpo_cli.engine.forward`) and are not compared."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Result, write_recipe

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
pytest.importorskip("trl")

N_PAIRS = 12
CASES = {
    "sigmoid": {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0},
    "simpo": {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0},
}


def trl_evaluate(model_dir: Path, rows: list[dict[str, Any]], case: dict, out: Path) -> dict:
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = CPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=512,
        per_device_eval_batch_size=4,
        disable_dropout=True,
        **case,
    )
    data = Dataset.from_list(rows)
    trainer = CPOTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    metrics = trainer.evaluate()
    # TRL's Trainer leaves a process-wide accelerate state behind; cpo builds its own
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    return dict(metrics)


@pytest.mark.parametrize("case_name", list(CASES))
def test_cpo_eval_equals_trl_evaluate(
    cli: Callable[..., Result],
    private_cache: Path,
    case_name: str,
    tiny_model_dir: Path,
    demo_eval_path: Path,
    tmp_path: Path,
) -> None:
    case = CASES[case_name]
    lines = demo_eval_path.read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    theirs = trl_evaluate(tiny_model_dir, [json.loads(x) for x in lines], case, tmp_path / "trl")

    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model_dir,
        eval=demo_eval_path,
        eval_rows=N_PAIRS,
        per_device_eval_batch_size=4,
        max_length=512,
        max_prompt_length=256,
        # TRL's NLL term is a mean per batch; cpo's default weights it by tokens over the
        # whole evaluation (average_tokens_across_devices), so compare in TRL's mode
        average_tokens_across_devices=False,
        **case,
    )
    result = cli("eval", str(recipe), "--json", "-")
    assert result.exit_code == 0
    ours = json.loads(result.stdout)["metrics"]

    assert ours["eval_num_pairs"] == N_PAIRS
    scale = abs(theirs["eval_rewards/chosen"]) + abs(theirs["eval_rewards/rejected"])
    for name, value in theirs.items():
        if not name.startswith(("eval_rewards/", "eval_logps/", "eval_loss", "eval_nll_loss")):
            continue
        # a margin is a difference of near-equal float32 rewards: judge it on their scale
        tol = 1e-5 * scale if name == "eval_rewards/margins" else 1e-7
        assert ours[name] == pytest.approx(value, rel=1e-5, abs=tol), (name, ours[name], value)
