"""Our loss and every metric against TRL 1.16's CPOTrainer on the same tiny model and batch.

TRL tokenises the pairs (its own `tokenize_row`); we rebuild prepared rows from exactly those
token ids, so both sides score the same tokens. TRL's numbers come from its
`get_batch_loss_metrics`; ours from `batch_loss_and_metrics`, in both layouts.

`logits/*` differ by definition (TRL averages over every position of the padded rows, prompt and
padding included; we average over answer-predicting positions, see `cpo_cli.engine.forward`), so
they are compared with TRL's own logits averaged over those positions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine.objective import batch_loss_and_metrics  # noqa: E402
from cpo_cli.metric_names import PAIR_METRICS  # noqa: E402
from cpo_cli.recipe.training import TrainingConfig  # noqa: E402

N_PAIRS = 4
#: `CPO_TEST_DEVICE=cuda` runs the same comparisons on a GPU (benchmarks/device_check.sh), fp32,
#: where kernels differ between layouts a little more than on the CPU
DEVICE = os.environ.get("CPO_TEST_DEVICE", "cpu")
REL = 1e-5 if DEVICE == "cpu" else 1e-4

CASES: dict[str, dict[str, Any]] = {
    "sigmoid": {"loss_type": "sigmoid", "beta": 0.1},
    "sigmoid-smoothed": {"loss_type": "sigmoid", "beta": 0.5, "label_smoothing": 0.2},
    "sigmoid-no-nll": {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.0},
    "hinge": {"loss_type": "hinge", "beta": 0.1, "cpo_alpha": 0.5},
    "ipo": {"loss_type": "ipo", "beta": 0.1},
    "simpo": {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.7, "cpo_alpha": 0.0},
    "cpo-simpo": {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.3},
    "alphapo": {"loss_type": "alphapo", "beta": 2.5, "alpha": 0.25, "simpo_gamma": 0.3},
    "sigmoid-alpha": {"loss_type": "sigmoid", "beta": 0.1, "alpha": -0.02},
    "conversational": {"loss_type": "sigmoid", "beta": 0.1, "data": "conversational"},
}


def _rows(demo_data_dir: Path, kind: str) -> list[dict[str, Any]]:
    name = "demo_train_conversational.jsonl" if kind == "conversational" else "demo_train.jsonl"
    lines = (demo_data_dir / name).read_text(encoding="utf-8").splitlines()[:N_PAIRS]
    return [json.loads(line) for line in lines]


def _trl_trainer(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], case: dict[str, Any], out: Path
) -> Any:
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    knobs = {k: v for k, v in case.items() if k != "data"}
    args = CPOConfig(
        output_dir=str(out),
        use_cpu=DEVICE == "cpu",
        bf16=False,
        report_to=[],
        max_length=512,
        per_device_train_batch_size=N_PAIRS,
        disable_dropout=True,
        **knobs,
    )
    return CPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def _prepared_rows(trl_dataset: Any) -> list[dict[str, list[int]]]:
    """Our prepared rows from TRL's tokenised rows: prompt = the tokens TRL labels -100."""
    out = []
    for row in trl_dataset:
        sides = {}
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            n_prompt = sum(1 for x in labels if x == -100)
            sides[side] = (ids[:n_prompt], ids[n_prompt:])
        assert sides["chosen"][0] == sides["rejected"][0], (
            "test data must not merge at the boundary"
        )
        out.append(
            {
                "prompt_input_ids": sides["chosen"][0],
                "chosen_input_ids": sides["chosen"][1],
                "rejected_input_ids": sides["rejected"][1],
            }
        )
    return out


def _trl_answer_logits_means(
    trainer: Any, model: Any, batch: dict[str, Any]
) -> tuple[float, float]:
    """TRL's own logits, averaged over the answer-predicting positions and the vocabulary."""
    with torch.no_grad():
        _, _, chosen_logits, rejected_logits, _ = trainer.concatenated_forward(model, batch)[:5]
    means = []
    for logits, key in ((chosen_logits, "chosen_labels"), (rejected_logits, "rejected_labels")):
        labels = batch[key]
        width = logits.shape[1]
        labels = torch.nn.functional.pad(labels, (0, width - labels.shape[1]), value=-100)
        predicts = labels[:, 1:] != -100
        means.append(float(logits[:, :-1][predicts].mean()))
    return means[0], means[1]


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(DEVICE)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The tiny Llama."""
    return _load(tiny_model_dir)


def _close(ours: float, theirs: float, name: str, scale: float = 0.0) -> None:
    """Within REL relative; `scale`: the size of the operands of a difference (margins), since a
    float32 difference of two near-equal rewards carries their rounding, not its own."""
    tol = max(1e-7, REL * scale)
    assert ours == pytest.approx(theirs, rel=REL, abs=tol), f"{name}: ours {ours} vs TRL {theirs}"


@pytest.mark.parametrize("case_name", list(CASES))
def test_loss_and_metrics_match_trl(
    case_name: str, tiny: tuple[Any, Any], demo_data_dir: Path, tmp_path: Path
) -> None:
    _check_case(*tiny, CASES[case_name], demo_data_dir, tmp_path)


@pytest.mark.parametrize("case_name", ["cpo-simpo", "conversational"])
def test_qwen2_matches_trl(
    case_name: str, tiny_qwen2_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    _check_case(*_load(tiny_qwen2_dir), CASES[case_name], demo_data_dir, tmp_path)


def _check_case(
    model: Any, tokenizer: Any, case: dict[str, Any], demo_data_dir: Path, tmp_path: Path
) -> None:
    rows = _rows(demo_data_dir, case.get("data", "standard"))
    trainer = _trl_trainer(model, tokenizer, rows, case, tmp_path)
    dataset = trainer.train_dataset
    trl_batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])

    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch, "train")
    trl_logits = _trl_answer_logits_means(trainer, model, trl_batch)

    knobs = {k: v for k, v in case.items() if k != "data"}
    training = TrainingConfig(output_dir=str(tmp_path), **knobs)
    prepared = _prepared_rows(dataset)
    for layout in ("packed", "pair_rows"):
        batch = collate_pairs(prepared, pad_token_id=tokenizer.pad_token_id, layout=layout)
        batch = {k: v.to(DEVICE) for k, v in batch.items()}
        with torch.no_grad():
            loss, metrics = batch_loss_and_metrics(model, batch, training)
        _close(float(loss), float(trl_loss), f"{layout} loss")
        assert set(metrics) == set(PAIR_METRICS)
        for name in PAIR_METRICS:
            if name.startswith("logits/"):
                theirs = trl_logits[0 if name.endswith("chosen") else 1]
            else:
                theirs = trl_metrics[name]
            scale = 0.0
            if name == "rewards/margins":
                scale = abs(trl_metrics["rewards/chosen"]) + abs(trl_metrics["rewards/rejected"])
            _close(float(metrics[name]), theirs, f"{layout} {name}", scale)


def test_gradients_match_trl(tiny: tuple[Any, Any], demo_data_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = tiny
    case = CASES["cpo-simpo"]
    trainer = _trl_trainer(model, tokenizer, _rows(demo_data_dir, "standard"), case, tmp_path)
    dataset = trainer.train_dataset
    model.zero_grad()
    trl_loss, _ = trainer.get_batch_loss_metrics(
        model, trainer.data_collator([dataset[i] for i in range(len(dataset))]), "train"
    )
    trl_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch = collate_pairs(_prepared_rows(dataset), pad_token_id=tokenizer.pad_token_id)
    batch = {k: v.to(DEVICE) for k, v in batch.items()}
    loss, _ = batch_loss_and_metrics(model, batch, TrainingConfig(output_dir=str(tmp_path), **case))
    loss.backward()
    for name, grad in expected.items():
        got = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-7, msg=name)
    model.zero_grad()
