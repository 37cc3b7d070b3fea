"""`cpo eval` pieces that need no model: gate parsing and checking, differences, the JSON
report, reference metrics (fast; filed here because tests/integration/test_eval* is ours)."""

from __future__ import annotations

import math

import pytest

from cpo_cli.engine.generate import Sample
from cpo_cli.errors import EXIT_GATE_FAILED, EXIT_USAGE, GateFailedError, UsageError
from cpo_cli.evaluation import (
    EVAL_METRICS,
    NUM_PAIRS,
    check_gates,
    difference,
    gateable_metrics,
    parse_gates,
    raise_on_failed_gates,
    reference_metrics,
    report_json,
    sample_rows,
)
from cpo_cli.gen_metrics import GENERATION_METRICS
from cpo_cli.judge import REWARD_METRICS

METRICS = {"eval_loss": 0.7, "eval_rewards/accuracies": 0.55, NUM_PAIRS: 60.0}


def test_parse_gates_accepts_both_spellings() -> None:
    gates = parse_gates(["rewards/accuracies=0.5", "eval_num_pairs=10"], ["eval_loss=1.5"])
    assert [(g.metric, g.kind, g.threshold) for g in gates] == [
        ("eval_rewards/accuracies", "under", 0.5),
        (NUM_PAIRS, "under", 10.0),
        ("eval_loss", "over", 1.5),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("eval_acc=0.5", "unknown metric 'eval_acc'"),
        ("eval_loss", "expected METRIC=VALUE"),
        ("eval_loss=high", "'high' is not a number"),
    ],
)
def test_bad_gate_specs_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_gates([spec], [])
    assert info.value.exit_code == EXIT_USAGE
    if "unknown" in message:
        assert all(name in info.value.message for name in EVAL_METRICS)


def test_gates_pass_and_fail_with_names_values_thresholds() -> None:
    passing = parse_gates(["eval_rewards/accuracies=0.55"], ["eval_loss=0.7"])  # bounds inclusive
    raise_on_failed_gates(check_gates(METRICS, passing))
    failing = parse_gates(["eval_rewards/accuracies=0.6"], ["eval_loss=0.5"])
    with pytest.raises(GateFailedError) as info:
        raise_on_failed_gates(check_gates(METRICS, failing))
    text = info.value.message
    assert "eval_rewards/accuracies = 0.55 is below the threshold 0.6" in text
    assert "eval_loss = 0.7 is above the threshold 0.5" in text
    assert info.value.exit_code == EXIT_GATE_FAILED == 3


def test_nan_and_missing_metrics_fail_gates() -> None:
    gates = parse_gates(["eval_loss=0"], ["eval_nll_loss=10"])
    results = check_gates({"eval_loss": math.nan}, gates)
    assert [r.passed for r in results] == [False, False]
    with pytest.raises(GateFailedError, match="eval_nll_loss = missing"):
        raise_on_failed_gates(results)


def test_difference_and_report_json() -> None:
    other = {"eval_loss": 0.9, "eval_rewards/accuracies": 0.5, NUM_PAIRS: 60.0}
    diff = difference(METRICS, other)
    assert diff["eval_loss"] == pytest.approx(-0.2) and diff[NUM_PAIRS] == 0
    results = check_gates(METRICS, parse_gates(["eval_loss=1"], []))
    report = report_json(
        model="m",
        dataset="d",
        metrics={**METRICS, "eval_nll_loss": math.inf},
        compare=("base", other),
        gates=results,
    )
    assert report["num_pairs"] == 60
    assert report["metrics"]["eval_nll_loss"] == "inf"  # valid JSON, still readable
    assert report["compare"]["difference"]["eval_rewards/accuracies"] == pytest.approx(0.05)
    assert report["gates"][0] == {
        "metric": "eval_loss",
        "kind": "fail_under",
        "threshold": 1.0,
        "value": 0.7,
        "passed": False,
    }


def test_sample_rows_is_seeded_and_bounded() -> None:
    assert sample_rows(5, 10, seed=0) == [0, 1, 2, 3, 4]
    picked = sample_rows(100, 4, seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 4
    assert picked == sample_rows(100, 4, seed=3)


def _sample(generation: str, chosen: str) -> Sample:
    return Sample("p", generation, chosen, "r", tokens=1, finished=True, answer_correct=None)


def test_reference_metrics_perfect_and_poor() -> None:
    perfect = [_sample("le chat noir dort", "le chat noir dort")] * 2
    scores = reference_metrics(perfect)
    assert scores["eval_bleu"] == pytest.approx(100.0) and scores["eval_chrf"] == pytest.approx(100)
    poor = reference_metrics([_sample("xyz", "le chat noir dort")])
    assert poor["eval_bleu"] < 5 and poor["eval_chrf"] < 20


def test_generation_and_judge_metrics_are_gateable_only_when_measured() -> None:
    plain = gateable_metrics()
    assert "eval_gen/answer_accuracy" not in plain
    generated = gateable_metrics(generate=True)
    assert set(GENERATION_METRICS) <= set(generated)
    assert not set(REWARD_METRICS) & set(generated)
    judged = gateable_metrics(generate=True, reward_model=True)
    assert "eval_reward/win_rate_vs_chosen" in judged
    assert "eval_reward/win_rate_vs_compare" not in judged
    assert "eval_reward/win_rate_vs_compare" in gateable_metrics(
        generate=True, reward_model=True, compare=True
    )
    gates = parse_gates(["gen/answer_accuracy=0.5"], ["gen/length_ratio=2"], valid=generated)
    assert [g.metric for g in gates] == ["eval_gen/answer_accuracy", "eval_gen/length_ratio"]
    with pytest.raises(UsageError, match="unknown metric 'gen/answer_accuracy'"):
        parse_gates(["gen/answer_accuracy=0.5"], [], valid=plain)


def test_reference_metrics_without_sacrebleu(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cpo_cli.errors import DependencyMissingError

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import now raises ImportError
    with pytest.raises(DependencyMissingError, match="needs the sacrebleu package"):
        reference_metrics([_sample("a", "a")])
