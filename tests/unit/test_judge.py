"""The reward-model judge on a tiny reward model built from a config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cpo_cli import judge as jd
from cpo_cli.errors import UsageError

PROMPTS = ["What is 6 * 6?", "Name the capital city of China.", "Hi", "Translate: the cat"]
ANSWERS = ["6 * 6 = 36.", "The capital of China is Beijing.", "Hello! How can I help?", "le chat"]


def test_win_rate_counts_ties_as_half() -> None:
    assert jd.win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError):
        jd.win_rate([], [])


def test_reward_metrics_worked_example() -> None:
    metrics = jd.reward_metrics([1.0, -1.0], [0.0, 0.0], compare=[2.0, -1.0])
    assert metrics == {
        jd.REWARD_MEAN: 0.0,
        jd.REWARD_CHOSEN_MEAN: 0.0,
        jd.WIN_RATE_VS_CHOSEN: 0.5,
        jd.WIN_RATE_VS_COMPARE: 0.25,  # a loss and a tie
    }
    assert jd.WIN_RATE_VS_COMPARE not in jd.reward_metrics([1.0], [0.0])


def test_judge_reads_the_chat_template(tiny_reward_model_dir: Path) -> None:
    judge = jd.load_reward_model(str(tiny_reward_model_dir))
    text = jd.judge_input(judge.tokenizer, "What is 6 * 6?", "36")
    assert (
        text == "<|im_start|>user\nWhat is 6 * 6?<|im_end|>\n<|im_start|>assistant\n36<|im_end|>\n"
    )


def test_batched_scores_equal_one_at_a_time(tiny_reward_model_dir: Path) -> None:
    import torch

    judge = jd.load_reward_model(str(tiny_reward_model_dir))
    seen: list[tuple[int, int]] = []
    batched = jd.score(
        judge, PROMPTS, ANSWERS, batch_size=3, on_progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(3, 4), (4, 4)]
    for prompt, answer, value in zip(PROMPTS, ANSWERS, batched, strict=True):
        text = jd.judge_input(judge.tokenizer, prompt, answer)
        ids = judge.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            alone = float(judge.model(**ids).logits[0, 0])
        assert value == pytest.approx(alone, abs=1e-5)
    assert len(set(batched)) == len(batched)  # different inputs, different rewards


def test_without_a_template_the_judge_reads_a_text_pair(
    tiny_reward_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rm"
    shutil.copytree(tiny_reward_model_dir, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    judge = jd.load_reward_model(str(folder))
    assert jd.judge_input(judge.tokenizer, "Hi", "Hello") == ("Hi", "Hello")
    scores = jd.score(judge, PROMPTS[:2], ANSWERS[:2], batch_size=2)
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_a_model_with_two_outputs_is_refused(tiny_reward_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "classifier"
    shutil.copytree(tiny_reward_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    config["label2id"] = {"bad": 0, "good": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="has 2 outputs; a reward model has exactly one"):
        jd.load_reward_model(str(folder))


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from cpo_cli.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="--reward-model"):
        jd.load_reward_model(str(tmp_path / "nowhere"))
