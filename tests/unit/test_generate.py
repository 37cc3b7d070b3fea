"""Batched generation gives the one-at-a-time greedy answers; shards cover every prompt once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpo_cli.engine.generate import Generation, _trim
from cpo_cli.engine.sharding import shard_indices

PROMPTS = [
    "What is 6 * 6?",
    "Name the capital city of China, please, and say nothing else at all.",
    "Translate into French: the red cat",
    "Hi",
    "Which word means the opposite of 'hot'? Answer in one word.",
]


@pytest.mark.parametrize(
    ("n", "world", "shares"),
    [
        (5, 2, [[0, 2, 4], [1, 3, 3]]),
        (4, 2, [[0, 2], [1, 3]]),
        (2, 3, [[0], [1], [0]]),  # an empty share repeats prompt 0
        (1, 2, [[0], [0]]),
        (0, 2, [[], []]),
    ],
)
def test_shards_cover_every_prompt_with_equal_counts(
    n: int, world: int, shares: list[list[int]]
) -> None:
    assert [shard_indices(n, rank, world) for rank in range(world)] == shares


def test_trim_stops_at_the_first_end_token() -> None:
    assert _trim([5, 6, 2, 0, 0], {2}) == ((5, 6), True)
    assert _trim([5, 6, 7], {2}) == ((5, 6, 7), False)
    assert _trim([2, 5], {2, 9}) == ((), True)


def _rows(tokenizer: Any, chat: bool) -> list[dict[str, list[int]]]:
    rows = []
    for prompt in PROMPTS:
        if chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            ids = tokenizer(prompt)["input_ids"]
        rows.append({"prompt_input_ids": [tokenizer.bos_token_id, *ids]})
    return rows


def _greedy(
    model: Any, tokenizer: Any, rows: list[dict], batch_size: int, **kw: Any
) -> list[Generation]:
    from cpo_cli.engine.generate import generate_answers

    kw.setdefault("is_encoder_decoder", False)
    return generate_answers(
        model,
        tokenizer,
        rows,
        batch_size=batch_size,
        max_new_tokens=12,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        **kw,
    )


@pytest.mark.parametrize("chat", [False, True])
def test_batched_greedy_equals_one_at_a_time(tiny_model_dir: Path, chat: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = _rows(tokenizer, chat)
    assert len({len(r["prompt_input_ids"]) for r in rows}) == len(rows)  # all lengths differ
    single = _greedy(model, tokenizer, rows, batch_size=1)
    seen: list[tuple[int, int]] = []
    batched = _greedy(
        model, tokenizer, rows, batch_size=4, on_progress=lambda d, t: seen.append((d, t))
    )
    assert batched == single
    assert [g.token_ids for g in single] != [()] * len(rows)
    assert all(isinstance(g, Generation) and len(g.token_ids) <= 12 for g in batched)
    assert seen == [(4, 5), (5, 5)]
    assert model.training is False  # left in eval mode: it was not training before


def test_batched_greedy_equals_one_at_a_time_encoder_decoder(tiny_seq2seq_dir: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_seq2seq_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_dir)
    rows = [{"prompt_input_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    model.train()
    single = _greedy(model, tokenizer, rows, batch_size=1, is_encoder_decoder=True)
    batched = _greedy(model, tokenizer, rows, batch_size=3, is_encoder_decoder=True)
    assert batched == single
    assert model.training is True  # put back in training mode
