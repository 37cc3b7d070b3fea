"""The collapse detector on evaluation histories worked out by hand."""

from __future__ import annotations

from typing import Any

from cpo_cli.engine.collapse import collapse_warning

HEALTHY = {
    "eval_gen/num_samples": 16.0,
    "eval_gen/length_ratio": 1.1,
    "eval_gen/repeated_4grams": 0.02,
    "eval_gen/distinct_2": 0.6,
    "eval_gen/truncated": 0.0,
    "eval_gen/answer_accuracy": 0.5,
}


def _eval(step: int, margins: float, **gen: float) -> dict[str, Any]:
    fields = {k.replace("eval_gen/", ""): v for k, v in HEALTHY.items()}
    fields.update(gen)
    return {
        "step": step,
        "eval_rewards/margins": margins,
        **{f"eval_gen/{k}": v for k, v in fields.items()},
    }


def test_no_warning_while_generations_stay_healthy() -> None:
    history = [_eval(0, 0.1), {"step": 5, "loss": 0.6}, _eval(10, 0.5, answer_accuracy=0.7)]
    assert collapse_warning(history) is None
    assert collapse_warning(history[:1]) is None  # nothing to compare with yet


def test_length_blow_up_while_margins_rise() -> None:
    warning = collapse_warning([_eval(0, 0.1), _eval(10, 0.4), _eval(20, 0.9, length_ratio=2.6)])
    assert warning is not None and warning.step == 20
    assert warning.margins == (0.4, 0.9)
    assert warning.reasons == ("length 2.60x the chosen answers (1.10x at step 0)",)
    message = warning.message()
    assert "possible collapse at step 20" in message and "(0.4 -> 0.9)" in message


def test_a_verbose_start_is_not_a_blow_up() -> None:
    # 2.6x at the start and 2.9x now: over the limit, but not 1.25x the starting ratio
    history = [_eval(0, 0.1, length_ratio=2.6), _eval(10, 0.5, length_ratio=2.9)]
    assert collapse_warning(history) is None


def test_degeneration_jumps() -> None:
    warning = collapse_warning(
        [_eval(0, 0.1), _eval(10, 0.8, repeated_4grams=0.4, distinct_2=0.3, truncated=0.5)]
    )
    assert warning is not None
    assert warning.reasons == (
        "repeated 4-grams 0.40 (0.02 at step 0)",
        "distinct-2 0.30 (0.60 at step 0)",
        "50% of generations cut off at the token limit (0% at step 0)",
    )


def test_answer_accuracy_falls_from_its_best() -> None:
    history = [
        _eval(0, 0.1, answer_accuracy=0.5),
        _eval(10, 0.4, answer_accuracy=0.8),
        _eval(20, 0.6, answer_accuracy=0.6),
    ]
    warning = collapse_warning(history)
    assert warning is not None
    assert warning.reasons == ("answer accuracy 0.60 (best so far 0.80)",)
    # a drop of less than 0.15 is noise on a few samples
    assert collapse_warning([*history[:2], _eval(20, 0.6, answer_accuracy=0.7)]) is None


def test_no_warning_when_margins_stop_rising() -> None:
    history = [_eval(0, 0.1), _eval(10, 0.9), _eval(20, 0.8, length_ratio=3.0)]
    assert collapse_warning(history) is None


def test_evaluations_without_generations_are_skipped() -> None:
    plain = {"step": 10, "eval_rewards/margins": 5.0}  # no generation metrics
    history = [_eval(0, 0.1), plain, _eval(20, 0.2, truncated=1.0)]
    warning = collapse_warning(history)
    assert warning is not None and warning.margins == (0.1, 0.2)
