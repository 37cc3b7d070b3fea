"""Deterministic generator of the shipped demo preference data (run it to rebuild the files).

Every pair has a chosen answer that is plainly better than the rejected one (a right sum against
an off-by-a-little one, the true capital against a neighbouring city, a faithful translation
against one with a wrong word, the antonym against a near-synonym), and answers are short so a
quick CPU run can learn the preference. Usage: `python -m cpo_cli.assets.make_demo_data [DIR]`.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SEED = 1234
N_TRAIN = 300
N_EVAL = 60
DATA_DIR = Path(__file__).parent / "data"

Pair = tuple[str, str, str]  # prompt, chosen, rejected

CAPITALS = [
    ("France", "Paris", "Lyon"),
    ("Germany", "Berlin", "Munich"),
    ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"),
    ("Portugal", "Lisbon", "Porto"),
    ("Japan", "Tokyo", "Osaka"),
    ("China", "Beijing", "Shanghai"),
    ("India", "New Delhi", "Mumbai"),
    ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"),
    ("Brazil", "Brasilia", "Rio de Janeiro"),
    ("Turkey", "Ankara", "Istanbul"),
    ("Switzerland", "Bern", "Zurich"),
    ("Morocco", "Rabat", "Casablanca"),
    ("Nigeria", "Abuja", "Lagos"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Poland", "Warsaw", "Krakow"),
    ("Egypt", "Cairo", "Alexandria"),
    ("Russia", "Moscow", "Saint Petersburg"),
    ("Greece", "Athens", "Thessaloniki"),
    ("Norway", "Oslo", "Bergen"),
    ("Sweden", "Stockholm", "Gothenburg"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaiso"),
    ("Mexico", "Mexico City", "Guadalajara"),
    ("Argentina", "Buenos Aires", "Cordoba"),
    ("Austria", "Vienna", "Salzburg"),
    ("Ireland", "Dublin", "Cork"),
    ("Netherlands", "Amsterdam", "Rotterdam"),
    ("Belgium", "Brussels", "Antwerp"),
    ("Czechia", "Prague", "Brno"),
    ("Hungary", "Budapest", "Debrecen"),
    ("Finland", "Helsinki", "Tampere"),
    ("Denmark", "Copenhagen", "Aarhus"),
    ("South Korea", "Seoul", "Busan"),
    ("Thailand", "Bangkok", "Chiang Mai"),
    ("Pakistan", "Islamabad", "Karachi"),
    ("New Zealand", "Wellington", "Auckland"),
    ("South Africa", "Pretoria", "Cape Town"),
]

ANTONYMS = [
    ("hot", "cold", "warm"),
    ("big", "small", "large"),
    ("fast", "slow", "quick"),
    ("happy", "sad", "glad"),
    ("light", "dark", "bright"),
    ("up", "down", "above"),
    ("open", "closed", "ajar"),
    ("early", "late", "soon"),
    ("full", "empty", "filled"),
    ("strong", "weak", "sturdy"),
    ("rich", "poor", "wealthy"),
    ("old", "young", "aged"),
    ("hard", "soft", "firm"),
    ("wet", "dry", "damp"),
    ("high", "low", "tall"),
    ("loud", "quiet", "noisy"),
    ("clean", "dirty", "tidy"),
    ("first", "last", "initial"),
    ("win", "lose", "succeed"),
    ("buy", "sell", "purchase"),
    ("true", "false", "right"),
    ("inside", "outside", "within"),
    ("begin", "end", "start"),
    ("thick", "thin", "dense"),
    ("cheap", "expensive", "inexpensive"),
    ("near", "far", "close"),
    ("push", "pull", "shove"),
    ("day", "night", "noon"),
    ("love", "hate", "adore"),
    ("safe", "dangerous", "secure"),
]

CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
]
ANTONYM_QUESTIONS = [
    "Give the opposite of the word '{w}'.",
    "What is the antonym of '{w}'?",
    "Which word means the opposite of '{w}'?",
    "Name the opposite of '{w}'.",
]

# English -> French nouns (with their gender), each with a plausible wrong noun for the flawed
# translation.
WORDS = [
    ("cat", "chat", "chien"),
    ("dog", "chien", "chat"),
    ("house", "maison", "porte"),
    ("water", "eau", "vin"),
    ("bread", "pain", "lait"),
    ("book", "livre", "lettre"),
    ("sun", "soleil", "lune"),
    ("moon", "lune", "soleil"),
    ("tree", "arbre", "fleur"),
    ("car", "voiture", "train"),
    ("apple", "pomme", "poire"),
    ("city", "ville", "village"),
    ("friend", "ami", "ennemi"),
    ("sea", "mer", "lac"),
    ("milk", "lait", "pain"),
    ("door", "porte", "fenêtre"),
    ("window", "fenêtre", "porte"),
    ("bird", "oiseau", "poisson"),
    ("fish", "poisson", "oiseau"),
    ("school", "école", "église"),
]
FEMININE = {
    "maison", "porte", "eau", "lettre", "lune", "fleur", "voiture", "pomme", "poire", "ville",
    "mer", "fenêtre", "école", "église",
}  # fmt: skip
# English -> French adjectives (masculine, feminine), each with a plausible wrong one.
ADJECTIVES = [
    ("red", "rouge", "bleu"),
    ("small", "petit", "grand"),
    ("green", "vert", "jaune"),
    ("big", "grand", "petit"),
    ("white", "blanc", "noir"),
]
FEMININE_ADJECTIVES = {
    "rouge": "rouge",
    "bleu": "bleue",
    "petit": "petite",
    "grand": "grande",
    "vert": "verte",
    "jaune": "jaune",
    "blanc": "blanche",
    "noir": "noire",
}
BEFORE_THE_NOUN = {"petit", "grand"}  # colours follow the noun, size adjectives precede it


def french(noun: str, adjective: str | None = None) -> str:
    """A French noun phrase that agrees: 'le chat', "l'eau", 'la petite maison', 'le chat rouge'."""
    feminine = noun in FEMININE
    if adjective is None:
        article = "l'" if noun[0] in "aeiouéè" else ("la " if feminine else "le ")
        return f"{article}{noun}"
    form = FEMININE_ADJECTIVES[adjective] if feminine else adjective
    article = "la" if feminine else "le"
    if adjective in BEFORE_THE_NOUN:
        return f"{article} {form} {noun}"
    if noun[0] in "aeiouéè":
        return f"l'{noun} {form}"
    return f"{article} {noun} {form}"


def arithmetic(rng: random.Random) -> Pair:
    """A sum or a product: the rejected answer is off by a small amount. (No differences: a
    135M-parameter model cannot tell 84 - 22 = 62 from 64, so they only added noise.)"""
    op = rng.choice("+*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        value = a * b
    else:
        a, b = rng.randint(10, 99), rng.randint(1, 60)
        value = a + b
    wrong = value + rng.choice([-10, -2, -1, 1, 2, 10])
    prompt = f"What is {a} {op} {b}?"
    return prompt, f"{a} {op} {b} = {value}.", f"{a} {op} {b} = {wrong}."


def capital(rng: random.Random) -> Pair:
    country, right, wrong = rng.choice(CAPITALS)
    prompt = rng.choice(CAPITAL_QUESTIONS).format(c=country)
    return prompt, f"The capital of {country} is {right}.", f"The capital of {country} is {wrong}."


def antonym(rng: random.Random) -> Pair:
    word, right, wrong = rng.choice(ANTONYMS)
    prompt = rng.choice(ANTONYM_QUESTIONS).format(w=word)
    answer = "The opposite of '{w}' is '{a}'."
    return prompt, answer.format(w=word, a=right), answer.format(w=word, a=wrong)


def translation(rng: random.Random) -> Pair:
    """'the red cat' -> 'le chat rouge'; the flawed one swaps the noun or the adjective (and
    both agree in gender, as French requires)."""
    noun, fr_noun, fr_wrong_noun = rng.choice(WORDS)
    if rng.random() < 0.5:
        adj, fr_adj, fr_wrong_adj = rng.choice(ADJECTIVES)
        source = f"the {adj} {noun}"
        good = french(fr_noun, fr_adj)
        wrong_noun = rng.random() < 0.5
        bad = french(fr_wrong_noun, fr_adj) if wrong_noun else french(fr_noun, fr_wrong_adj)
    else:
        source, good, bad = f"the {noun}", french(fr_noun), french(fr_wrong_noun)
    return f"Translate into French: {source}", good, bad


GENERATORS: list[Callable[[random.Random], Pair]] = [arithmetic, capital, antonym, translation]


def generate_pairs(n: int, rng: random.Random, seen: set[str]) -> list[Pair]:
    """`n` distinct pairs (by prompt), the same number of each task kind, in turn; `seen`
    keeps the splits' prompts apart (the held-out prompts are never training prompts)."""
    if n % len(GENERATORS):
        raise ValueError(f"{n} pairs cannot be split evenly over {len(GENERATORS)} task kinds")
    pairs: list[Pair] = []
    attempts = 0
    while len(pairs) < n:
        kind = GENERATORS[len(pairs) % len(GENERATORS)]
        attempts += 1
        if attempts > 100 * n:
            raise RuntimeError("not enough distinct demo prompts")
        pair = kind(rng)
        if pair[0] in seen:
            continue
        seen.add(pair[0])
        pairs.append(pair)
    return pairs


def standard_rows(pairs: list[Pair]) -> Iterator[dict[str, object]]:
    """Plain text: the prompt ends in `Answer:` and each answer starts with a space, so the
    concatenation reads naturally (standard-format trainers join prompt and answer as is)."""
    for prompt, chosen, rejected in pairs:
        yield {
            "prompt": f"Question: {prompt}\nAnswer:",
            "chosen": f" {chosen}",
            "rejected": f" {rejected}",
        }


def conversational_rows(pairs: list[Pair]) -> Iterator[dict[str, object]]:
    for prompt, chosen, rejected in pairs:
        yield {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }


def implicit_rows(pairs: list[Pair]) -> Iterator[dict[str, object]]:
    """Whole conversations only; every third one opens with a system turn."""
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        head = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        head = [*head, {"role": "user", "content": prompt}]
        yield {
            "chosen": [*head, {"role": "assistant", "content": chosen}],
            "rejected": [*head, {"role": "assistant", "content": rejected}],
        }


def scored_rows(rng: random.Random, n: int) -> list[dict[str, object]]:
    """ALMA-R style triplets: a source, three candidate translations and a score for each.

    A few rows carry a tie for the best score or a missing score, so the pair builder's handling
    of both shows up in its report.
    """
    rows: list[dict[str, object]] = []
    for i in range(n):
        prompt, good, bad = translation(rng)
        words = good.split(" ")
        middle = " ".join(reversed(words)) if len(words) > 1 else f"{good}s"
        candidates = [good, middle, bad]
        scores: list[float | None] = [
            round(rng.uniform(0.85, 0.95), 3),
            round(rng.uniform(0.6, 0.8), 3),
            round(rng.uniform(0.2, 0.5), 3),
        ]
        order = list(range(3))
        rng.shuffle(order)
        candidates = [candidates[j] for j in order]
        scores = [scores[j] for j in order]
        if i % 10 == 4:  # a missing score: that candidate is left out
            scores[order.index(1)] = None
        if i % 10 == 7:  # every score equal: no preference, the row is dropped
            scores = [0.5, 0.5, 0.5]
        if i % 10 == 9:  # two candidates share the best score: the first one is chosen
            scores[order.index(1)] = scores[order.index(0)]
        if i % 20 == 14:  # only one candidate scored: no pair can be made
            scores = [None, None, 0.9]
        rows.append({"source": prompt, "translations": candidates, "scores": scores})
    return rows


def messy_rows() -> list[object]:
    """One or more rows of every kind of bad row, between good ones (see tests for the counts)."""
    good: dict[str, object] = {
        "prompt": "What is 2 + 2?",
        "chosen": "2 + 2 = 4.",
        "rejected": "2 + 2 = 5.",
    }
    return [
        good,  # 0 ok
        {"prompt": "What is 3 + 3?", "rejected": "3 + 3 = 7."},  # 1 missing chosen
        {"prompt": "", "chosen": "yes", "rejected": "no"},  # 2 empty prompt
        {"prompt": "What is 1 + 1?", "chosen": "", "rejected": "1 + 1 = 3."},  # 3 empty chosen
        {"prompt": "What is 4 + 4?", "chosen": 8, "rejected": "4 + 4 = 9."},  # 4 not a string
        {"prompt": "Same?", "chosen": "Same answer.", "rejected": "Same answer."},  # 5 identical
        {
            "prompt": [{"role": "user", "content": "Hi"}],  # 6 wrong role in answer
            "chosen": [{"role": "user", "content": "Hello"}],
            "rejected": [{"role": "assistant", "content": "Go away"}],
        },
        {
            "chosen": [
                {"role": "user", "content": "Capital of France?"},  # 7 implicit mismatch
                {"role": "assistant", "content": "Paris."},
            ],
            "rejected": [
                {"role": "user", "content": "Capital of Spain?"},
                {"role": "assistant", "content": "Lyon."},
            ],
        },
        {
            "prompt": [{"role": "user", "content": 42}],  # 8 content not a string
            "chosen": [{"role": "assistant", "content": "ok"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
        {"prompt": "What is 5 + 5?", "chosen": "5 + 5 = 10.", "rejected": None},  # 9 null
        {"prompt": "What is 6 + 6?", "chosen": "6 + 6 = 12.", "rejected": "6 + 6 = 13."},  # 10 ok
        {"prompt": "What is 7 + 7?", "chosen": "   ", "rejected": "7 + 7 = 15."},  # 11 blank
        # 12: a long prompt: truncated with the default lengths, too long for tiny ones
        {
            "prompt": "Sum these: " + " + ".join(str(i % 10) for i in range(600)) + " =",
            "chosen": " 1800.",
            "rejected": " 1799.",
        },
        {
            "prompt": ["just text"],
            "chosen": [{"role": "assistant", "content": "a"}],  # 13 bad msg
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        ["not", "an", "object"],  # 14 a JSON line that is not an object
    ]


def write_jsonl(path: Path, rows: Iterable[object]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_demo_data(out_dir: Path = DATA_DIR) -> list[Path]:
    """Write every demo file into `out_dir`; the same seed gives byte-identical files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    seen: set[str] = set()
    train = generate_pairs(N_TRAIN, rng, seen)
    evals = generate_pairs(N_EVAL, rng, seen)
    files: dict[str, Iterable[object]] = {
        "demo_train.jsonl": list(standard_rows(train)),
        "demo_eval.jsonl": list(standard_rows(evals)),
        "demo_train_conversational.jsonl": list(conversational_rows(train)),
        "demo_eval_conversational.jsonl": list(conversational_rows(evals)),
        "demo_eval_implicit.jsonl": list(implicit_rows(evals)),
        "demo_scored.jsonl": scored_rows(random.Random(SEED + 1), 40),
        "demo_messy.jsonl": messy_rows(),
    }
    paths = []
    for name, rows in files.items():
        write_jsonl(out_dir / name, rows)
        paths.append(out_dir / name)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR
    for p in build_demo_data(target):
        print(p)
