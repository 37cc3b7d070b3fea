"""Task metrics on generated answers: did the model's own answers get better, not only its
preference scores? Pure functions of text and token ids (no torch), shared by `cpo eval
--generate` and `generate_during_eval`, each tested against values worked out by hand.

Definitions (also in the README):

- **words** of a text: NFKC-normalised, case-folded, then every number (a leading minus sign kept
  when it does not follow a letter or digit: `-3` in `= -3`, but `10-5` is `10`, `5`) or run of
  letters/digits/underscores. Punctuation and spaces only separate words.
- **answer accuracy** (short-answer data): the *distinguishing part* of the chosen answer is the
  set of its words that the rejected answer lacks, and vice versa. A generation is correct when
  it contains every word of the chosen answer's distinguishing part and does not contain every
  word of the rejected answer's (a rejected part that is empty is never "contained"). Pairs whose
  chosen answer has no distinguishing words (a reordering, a subset of the rejected answer) are
  left out; `eval_gen/answer_pairs` counts the pairs scored. Example: chosen `6 * 6 = 36.`,
  rejected `6 * 6 = 26.` → parts {36} and {26}; `36` is correct, `It is 26, not 36` is not.
- **exact match**: the generation's words equal the chosen answer's words.
- **length**: generated tokens (the end token not counted); the *length ratio* is the mean
  generated length over the mean chosen-answer length (both in the policy's tokens).
- **repeated 4-grams** (seq-rep-4 of Welleck et al. 2019, https://arxiv.org/abs/1908.04319):
  per generation, 1 − distinct 4-grams / 4-grams of its tokens; the mean over generations with
  at least one 4-gram.
- **distinct-2** (Li et al. 2016, https://arxiv.org/abs/1510.03055): distinct token bigrams over
  all bigrams, pooled over every generation.
- **truncated**: the fraction of generations that hit `max_new_tokens` without an end token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"(?<!\w)-?\d+(?:\.\d+)?|\w+")

#: Every generation metric, in table order (all `eval_`-prefixed, gateable in `cpo eval`).
ANSWER_ACCURACY = "eval_gen/answer_accuracy"
ANSWER_PAIRS = "eval_gen/answer_pairs"
EXACT_MATCH = "eval_gen/exact_match"
LENGTH = "eval_gen/length"
LENGTH_RATIO = "eval_gen/length_ratio"
REPEATED_4GRAMS = "eval_gen/repeated_4grams"
DISTINCT_2 = "eval_gen/distinct_2"
TRUNCATED = "eval_gen/truncated"
NUM_SAMPLES = "eval_gen/num_samples"
GENERATION_METRICS: tuple[str, ...] = (
    ANSWER_ACCURACY,
    EXACT_MATCH,
    LENGTH,
    LENGTH_RATIO,
    REPEATED_4GRAMS,
    DISTINCT_2,
    TRUNCATED,
    ANSWER_PAIRS,
    NUM_SAMPLES,
)


def words(text: str) -> list[str]:
    """The words of `text` as every metric here compares them (see the module docstring)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def distinguishing_parts(chosen: str, rejected: str) -> tuple[frozenset[str], frozenset[str]]:
    """(words of `chosen` not in `rejected`, words of `rejected` not in `chosen`)."""
    mine, theirs = set(words(chosen)), set(words(rejected))
    return frozenset(mine - theirs), frozenset(theirs - mine)


def answer_correct(generation: str, chosen: str, rejected: str) -> bool | None:
    """True when `generation` contains the chosen answer's distinguishing part and not the
    rejected one's; None when the chosen answer has no distinguishing part (not scorable)."""
    right, wrong = distinguishing_parts(chosen, rejected)
    if not right:
        return None
    said = set(words(generation))
    return right <= said and not (wrong and wrong <= said)


def exact_match(generation: str, chosen: str) -> bool:
    """The same words in the same order (case, punctuation and spacing ignored)."""
    return words(generation) == words(chosen)


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(tokens: Sequence[Hashable], n: int = 4) -> float | None:
    """1 − distinct n-grams / n-grams of one sequence (0: no repeats); None below n tokens."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(sequences: Iterable[Sequence[Hashable]], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams, pooled over `sequences`; None when there are none."""
    pooled = [g for tokens in sequences for g in ngrams(tokens, n)]
    if not pooled:
        return None
    return len(set(pooled)) / len(pooled)


@dataclass(frozen=True)
class GeneratedAnswer:
    """One generation beside its pair: what the metrics need."""

    generation: str
    chosen: str
    rejected: str
    #: generated token ids, the end token and padding removed
    token_ids: tuple[int, ...]
    #: tokens of the chosen answer (the end token not counted)
    chosen_length: int
    #: False when generation stopped at `max_new_tokens` without an end token
    finished: bool


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def generation_metrics(answers: Sequence[GeneratedAnswer]) -> dict[str, float]:
    """Every metric of `GENERATION_METRICS` for these answers. A metric with nothing to
    measure (no scorable pair, no 4-gram) is left out, so a gate on it fails as missing."""
    if not answers:
        return {}
    verdicts = [answer_correct(a.generation, a.chosen, a.rejected) for a in answers]
    scored = [float(v) for v in verdicts if v is not None]
    lengths = [len(a.token_ids) for a in answers]
    chosen_total = sum(a.chosen_length for a in answers)
    repeats = [r for a in answers if (r := repeated_ngram_rate(a.token_ids, 4)) is not None]
    values: dict[str, float | None] = {
        ANSWER_ACCURACY: _mean(scored),
        EXACT_MATCH: _mean([float(exact_match(a.generation, a.chosen)) for a in answers]),
        LENGTH: _mean([float(n) for n in lengths]),
        LENGTH_RATIO: sum(lengths) / chosen_total if chosen_total else None,
        REPEATED_4GRAMS: _mean(repeats),
        DISTINCT_2: distinct_n([a.token_ids for a in answers], 2),
        TRUNCATED: _mean([0.0 if a.finished else 1.0 for a in answers]),
        ANSWER_PAIRS: float(len(scored)),
        NUM_SAMPLES: float(len(answers)),
    }
    return {k: v for k, v in values.items() if v is not None}
