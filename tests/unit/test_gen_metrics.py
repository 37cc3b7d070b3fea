"""Generation metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from cpo_cli import gen_metrics as gm
from cpo_cli.gen_metrics import GeneratedAnswer


def test_words_normalise_case_punctuation_and_signs() -> None:
    assert gm.words("The capital of France is PARIS.") == [
        "the",
        "capital",
        "of",
        "france",
        "is",
        "paris",
    ]
    assert gm.words("52 - 55 = -3.") == ["52", "55", "-3"]  # a sign only before a number
    assert gm.words("10-5") == ["10", "5"]  # a minus between numbers is an operator
    assert gm.words("l'eau, 3.5 ｋｍ") == ["l", "eau", "3.5", "km"]  # NFKC folds full-width


def test_distinguishing_parts() -> None:
    right, wrong = gm.distinguishing_parts("6 * 6 = 36.", "6 * 6 = 26.")
    assert (right, wrong) == ({"36"}, {"26"})
    right, wrong = gm.distinguishing_parts(
        "The capital of Brazil is Brasilia.", "The capital of Brazil is Rio de Janeiro."
    )
    assert (right, wrong) == ({"brasilia"}, {"rio", "de", "janeiro"})
    # 64 + 2 = 66 against 64 + 2 = 64: the rejected answer adds no word of its own
    assert gm.distinguishing_parts("64 + 2 = 66.", "64 + 2 = 64.") == ({"66"}, set())


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("6 * 6 = 36.", True),
        ("36", True),
        ("The answer is 36!", True),
        ("6 * 6 = 26.", False),  # the rejected answer's part
        ("It is 26, not 36.", False),  # both: hedging is not an answer
        ("6 * 6 = 136.", False),  # whole words only: 136 is not 36
        ("", False),
    ],
)
def test_answer_correct_single_word_parts(generation: str, expected: bool) -> None:
    assert gm.answer_correct(generation, "6 * 6 = 36.", "6 * 6 = 26.") is expected


def test_answer_correct_multi_word_parts() -> None:
    chosen = "The capital of Brazil is Brasilia."
    rejected = "The capital of Brazil is Rio de Janeiro."
    assert gm.answer_correct("Brasilia.", chosen, rejected) is True
    # the rejected part is {rio, de, janeiro}: only all three together count as saying it
    assert gm.answer_correct("Brasilia, not Rio.", chosen, rejected) is True
    assert gm.answer_correct("Brasilia, not Rio de Janeiro.", chosen, rejected) is False
    assert gm.answer_correct("Rio de Janeiro.", chosen, rejected) is False
    # an empty rejected part is never "contained"
    assert gm.answer_correct("64 + 2 = 66", "64 + 2 = 66.", "64 + 2 = 64.") is True
    assert gm.answer_correct("64", "64 + 2 = 66.", "64 + 2 = 64.") is False


def test_answer_correct_is_undefined_without_a_distinguishing_part() -> None:
    assert gm.answer_correct("anything", "le chat rouge", "rouge chat le") is None
    assert gm.answer_correct("anything", "Paris", "Paris, France") is None


def test_exact_match_ignores_case_punctuation_and_spacing() -> None:
    assert gm.exact_match("the capital of france is paris", "The capital of France is Paris.")
    assert gm.exact_match("  6 * 6 = 36 ", "6 * 6 = 36.")
    assert not gm.exact_match("Paris", "The capital of France is Paris.")


def test_repeated_ngram_rate() -> None:
    # a b a b a b: 4-grams abab, baba, abab -> 2 distinct of 3 -> 1 - 2/3
    assert gm.repeated_ngram_rate("ababab", 4) == pytest.approx(1 / 3)
    assert gm.repeated_ngram_rate("abcdef", 4) == 0.0
    assert gm.repeated_ngram_rate("aaaaaa", 4) == pytest.approx(1 - 1 / 3)
    assert gm.repeated_ngram_rate("abc", 4) is None  # no 4-gram at all


def test_distinct_n_pools_every_sequence() -> None:
    # bigrams: ab bc | ab ba -> 4 bigrams, 3 distinct
    assert gm.distinct_n(["abc", "aba"], 2) == pytest.approx(3 / 4)
    assert gm.distinct_n(["a", ""], 2) is None


def _answer(generation: str, ids: tuple[int, ...], chosen_length: int, finished: bool):  # type: ignore[no-untyped-def]
    return GeneratedAnswer(
        generation=generation,
        chosen="6 * 6 = 36.",
        rejected="6 * 6 = 26.",
        token_ids=ids,
        chosen_length=chosen_length,
        finished=finished,
    )


def test_generation_metrics_worked_example() -> None:
    answers = [
        _answer("6 * 6 = 36.", (1, 2, 3, 4, 5), 5, True),  # correct, exact
        _answer("It is 26.", (7, 8), 5, True),  # wrong
        _answer("36 36 36 36 36", (9, 9, 9, 9, 9, 9, 9, 9), 5, False),  # correct, degenerate
    ]
    m = gm.generation_metrics(answers)
    assert m[gm.ANSWER_ACCURACY] == pytest.approx(2 / 3)
    assert m[gm.EXACT_MATCH] == pytest.approx(1 / 3)
    assert m[gm.LENGTH] == pytest.approx((5 + 2 + 8) / 3)
    assert m[gm.LENGTH_RATIO] == pytest.approx(15 / 15)
    # 4-gram repeat rates: 0 (5 tokens: 2 distinct of 2) and 1 - 1/5 (8 nines: 5 grams, 1
    # distinct); the 2-token answer has no 4-gram and is left out
    assert m[gm.REPEATED_4GRAMS] == pytest.approx((0 + 0.8) / 2)
    # bigrams: 4 distinct + 1 + 7 copies of (9, 9) -> 12 bigrams, 6 distinct
    assert m[gm.DISTINCT_2] == pytest.approx(6 / 12)
    assert m[gm.TRUNCATED] == pytest.approx(1 / 3)
    assert m[gm.ANSWER_PAIRS] == 3 and m[gm.NUM_SAMPLES] == 3
    assert set(m) == set(gm.GENERATION_METRICS)


def test_metrics_with_nothing_to_measure_are_left_out() -> None:
    unscorable = GeneratedAnswer("x", "a b", "b a", (1,), 2, True)
    m = gm.generation_metrics([unscorable])
    assert gm.ANSWER_ACCURACY not in m and gm.REPEATED_4GRAMS not in m
    assert gm.DISTINCT_2 not in m
    assert m[gm.ANSWER_PAIRS] == 0 and m[gm.LENGTH_RATIO] == pytest.approx(0.5)
    assert gm.generation_metrics([]) == {}
