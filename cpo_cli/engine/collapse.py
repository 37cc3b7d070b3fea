"""Collapse warnings for `generate_during_eval`: the preference metrics keep improving while the
model's own answers get worse. That is how SimPO runs fail (held-out accuracy at 1.00, answers
turned to nonsense), and nothing in `rewards/*` shows it.

A pure function of the run's evaluation history (`TrainerState.log_history`, so a resumed run
remembers where it started). At each evaluation after the first, when `eval_rewards/margins`
is still rising (above the previous evaluation's), it warns on any of:

- length blow-up: generations over `LENGTH_RATIO_LIMIT`× the chosen answers' length, and at
  least `LENGTH_GROWTH`× the ratio of the first evaluation;
- degeneration: repeated 4-grams up by `REPEAT_JUMP`, distinct-2 down by `DISTINCT_DROP`, or
  the truncated fraction up by `TRUNCATED_JUMP`, against the first evaluation;
- answer accuracy down by `ACCURACY_DROP` from its best so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cpo_cli.gen_metrics import (
    ANSWER_ACCURACY,
    DISTINCT_2,
    LENGTH_RATIO,
    NUM_SAMPLES,
    REPEATED_4GRAMS,
    TRUNCATED,
)

MARGINS = "eval_rewards/margins"
LENGTH_RATIO_LIMIT = 2.0
LENGTH_GROWTH = 1.25
REPEAT_JUMP = 0.15
DISTINCT_DROP = 0.2
TRUNCATED_JUMP = 0.25
ACCURACY_DROP = 0.15


@dataclass(frozen=True)
class CollapseWarning:
    step: int
    margins: tuple[float, float]  # previous evaluation, this one
    reasons: tuple[str, ...]

    def message(self) -> str:
        before, now = self.margins
        return (
            f"possible collapse at step {self.step}: {MARGINS} is still rising "
            f"({before:.3g} -> {now:.3g}) while the generations got worse: "
            f"{'; '.join(self.reasons)}. The preference metrics alone hide this; read "
            "eval_samples.jsonl"
        )


def _rose(now: Mapping[str, float], first: Mapping[str, float], key: str, by: float) -> bool:
    return key in now and key in first and now[key] - first[key] >= by


def collapse_warning(history: Sequence[Mapping[str, float]]) -> CollapseWarning | None:
    """The warning for the latest evaluation in `history`, or None. Entries without
    generation metrics (training logs, evaluations without generations) are skipped."""
    evals = [h for h in history if MARGINS in h and NUM_SAMPLES in h]
    if len(evals) < 2:
        return None
    first, previous, now = evals[0], evals[-2], evals[-1]
    if not now[MARGINS] > previous[MARGINS]:
        return None
    start = f"step {int(first.get('step', 0))}"
    reasons = []
    ratio, first_ratio = now.get(LENGTH_RATIO), first.get(LENGTH_RATIO)
    if (
        ratio is not None
        and first_ratio is not None
        and ratio > LENGTH_RATIO_LIMIT
        and ratio >= LENGTH_GROWTH * first_ratio
    ):
        reasons.append(f"length {ratio:.2f}x the chosen answers ({first_ratio:.2f}x at {start})")
    # no 4-gram at all (short answers) means nothing repeated
    repeats_now, repeats_first = now.get(REPEATED_4GRAMS, 0.0), first.get(REPEATED_4GRAMS, 0.0)
    if repeats_now - repeats_first >= REPEAT_JUMP:
        reasons.append(f"repeated 4-grams {repeats_now:.2f} ({repeats_first:.2f} at {start})")
    if _rose(first, now, DISTINCT_2, DISTINCT_DROP):
        reasons.append(f"distinct-2 {now[DISTINCT_2]:.2f} ({first[DISTINCT_2]:.2f} at {start})")
    if _rose(now, first, TRUNCATED, TRUNCATED_JUMP):
        reasons.append(
            f"{now[TRUNCATED]:.0%} of generations cut off at the token limit "
            f"({first[TRUNCATED]:.0%} at {start})"
        )
    best = max((e[ANSWER_ACCURACY] for e in evals[:-1] if ANSWER_ACCURACY in e), default=None)
    if best is not None and ANSWER_ACCURACY in now and best - now[ANSWER_ACCURACY] >= ACCURACY_DROP:
        reasons.append(f"answer accuracy {now[ANSWER_ACCURACY]:.2f} (best so far {best:.2f})")
    if not reasons:
        return None
    step = int(now.get("step", 0))
    return CollapseWarning(step, (previous[MARGINS], now[MARGINS]), tuple(reasons))
