"""Tokenisation of preference pairs: boundaries, BOS/EOS, truncation, drops, and TRL parity."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import make_training

from cpo_cli.data.tokenize import (
    LengthSettings,
    common_prefix_length,
    end_with_eos,
    tokenize_pairs,
    truncate_prompt,
)

BOS, EOS = 1, 2


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def lengths(**fields: Any) -> LengthSettings:
    """The length settings of a recipe with these `training` fields (schema defaults else)."""
    return LengthSettings.from_training(make_training(**fields))


def one(tok: Any, prompt: str, chosen: str, rejected: str, **fields: Any) -> Any:
    out = tokenize_pairs([prompt], [chosen], [rejected], tok, lengths(**fields))
    return SimpleNamespace(
        prompt=out.prompt_input_ids[0],
        chosen=out.chosen_input_ids[0],
        rejected=out.rejected_input_ids[0],
        drop=out.drop[0],
        truncated=out.truncated[0],
        merged=out.merged[0],
    )


# ---- pure helpers ---------------------------------------------------------------------------


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_length([1, 2, 3], [1, 5, 3]) == 1
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([7], [8]) == 0


def test_end_with_eos_appends_keeps_and_trims_blank_tail() -> None:
    blank = {10}.__contains__  # token 10 decodes to "\n"
    assert end_with_eos([5, 6], EOS, blank) == [5, 6, EOS]
    assert end_with_eos([5, EOS], EOS, blank) == [5, EOS]
    assert end_with_eos([5, EOS, 10], EOS, blank) == [5, EOS]  # ChatML "<|im_end|>\n"
    assert end_with_eos([5, EOS, 10, 10], EOS, blank) == [5, EOS]
    assert end_with_eos([5, 10], EOS, blank) == [5, 10, EOS]  # blank but no EOS before it
    assert end_with_eos([5, EOS, 7], EOS, blank) == [5, EOS, 7, EOS]  # text after EOS: not blank
    assert end_with_eos([], EOS, blank) == [EOS]
    assert end_with_eos([5], None, blank) == [5]


def test_truncate_prompt_modes_keep_bos() -> None:
    prompt = [BOS, 10, 11, 12, 13, 14]
    assert truncate_prompt(prompt, 3, "keep_end", BOS) == [BOS, 13, 14]
    assert truncate_prompt(prompt, 3, "keep_start", BOS) == [BOS, 10, 11]
    assert truncate_prompt(prompt, 1, "keep_end", BOS) == [BOS]
    assert truncate_prompt([10, 11, 12], 2, "keep_end", None) == [11, 12]
    assert truncate_prompt([10, 11, 12], 0, "keep_end", None) == []
    assert truncate_prompt(prompt, 10, "keep_end", BOS) == prompt


# ---- decoder-only pairs on the tiny tokenizer -----------------------------------------------


def test_plain_pair_matches_the_tokens_of_the_whole_text(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    pair = one(tok, "Question: What is 2 + 2?\nAnswer:", " 2 + 2 = 4.", " 2 + 2 = 5.")
    assert pair.drop is None and not pair.merged and not pair.truncated
    assert pair.prompt == [tok.bos_token_id, *ids(tok, "Question: What is 2 + 2?\nAnswer:")]
    assert pair.chosen == [*ids(tok, " 2 + 2 = 4."), tok.eos_token_id]
    assert pair.rejected[-1] == tok.eos_token_id and pair.rejected.count(tok.eos_token_id) == 1


def test_boundary_merge_moves_the_merged_token_into_the_answers(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    prompt = "The capital of France is "  # the trailing space merges with the answer's word
    assert ids(tok, prompt + "Paris.")[: len(ids(tok, prompt))] != ids(tok, prompt)
    pair = one(tok, prompt, "Paris.", "Lyon.")
    assert pair.merged and pair.drop is None
    for answer, answer_ids in (("Paris.", pair.chosen), ("Lyon.", pair.rejected)):
        assert pair.prompt[1:] + answer_ids[:-1] == ids(tok, prompt + answer)
    assert len(pair.prompt) == len(ids(tok, prompt))  # BOS in, the merged space out


def test_bos_added_once_and_absent_without_one(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    already = one(tok, "<s>Question: hi\nAnswer:", " yes", " no")
    assert already.prompt.count(tok.bos_token_id) == 1 and already.prompt[0] == tok.bos_token_id
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    pair = one(no_bos, "Question: hi\nAnswer:", " yes", " no")
    assert pair.prompt == ids(tok, "Question: hi\nAnswer:")


def test_eos_not_doubled_when_already_last(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    pair = one(tok, "Q:", " a<|im_end|>", " b")
    assert pair.chosen[-1] == tok.eos_token_id and pair.chosen.count(tok.eos_token_id) == 1


def test_chatml_answer_ends_at_one_end_of_turn_marker(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": "4"}], tokenize=False)
    chosen = full[len(prompt) :]
    assert chosen.endswith("<|im_end|>\n")
    pair = one(tok, prompt, chosen, "5<|im_end|>\n")
    tokens = tok.convert_ids_to_tokens(pair.chosen)
    assert tokens[-1] == "<|im_end|>" and tokens.count("<|im_end|>") == 1
    assert tok.decode(pair.chosen) == "4<|im_end|>"


def test_truncation_keep_end_and_keep_start(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    prompt = "Question: " + " ".join(f"w{i}" for i in range(60)) + "\nAnswer:"
    prompt_ids = ids(tok, prompt)
    assert len(prompt_ids) > 40
    limits = dict(max_length=40, max_prompt_length=24)
    end = one(tok, prompt, " yes it is", " no it is not", truncation_mode="keep_end", **limits)
    start = one(tok, prompt, " yes it is", " no it is not", truncation_mode="keep_start", **limits)
    for pair in (end, start):
        assert pair.truncated and pair.drop is None
        assert len(pair.prompt) == 24 and pair.prompt[0] == tok.bos_token_id
        assert len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) <= 40
    assert end.prompt[1:] == prompt_ids[-23:]
    assert start.prompt[1:] == prompt_ids[:23]
    # the answers fit after the prompt was cut: they keep every token and their EOS
    assert end.chosen == [*ids(tok, " yes it is"), tok.eos_token_id]


def test_answers_cut_to_what_the_prompt_leaves(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    answer = " " + " ".join(f"a{i}" for i in range(40))
    pair = one(tok, "Question: hi\nAnswer:", answer, " no", max_length=20, max_prompt_length=10)
    assert pair.truncated and pair.drop is None
    assert len(pair.prompt) + len(pair.chosen) == 20
    assert pair.chosen == ids(tok, answer)[: 20 - len(pair.prompt)]  # cut: no EOS
    assert pair.rejected[-1] == tok.eos_token_id


def test_empty_after_truncation_is_dropped_not_emitted(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    long_prompt = "Question: " + " ".join(f"w{i}" for i in range(40)) + "\nAnswer:"
    pair = one(tok, long_prompt, " yes", " no", max_length=16, max_prompt_length=16)
    assert pair.drop == "no_answer_room"
    # no prompt limit at all: a prompt longer than max_length also leaves nothing
    pair = one(tok, long_prompt, " yes", " no", max_length=16, max_prompt_length=None)
    assert pair.drop == "no_answer_room"


def test_identical_token_answers_are_dropped(tiny_tokenizer: Any) -> None:
    pair = one(tiny_tokenizer, "Q:", " same", " same<|im_end|>")
    assert pair.drop == "identical_answers"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.text(alphabet="ab c.?\n'é", min_size=1, max_size=30),
    chosen=st.text(alphabet="ab c.!\né", min_size=1, max_size=20),
    rejected=st.text(alphabet="ab xy.!", min_size=1, max_size=20),
)
def test_prompt_plus_answer_is_always_the_whole_text(
    tiny_tokenizer: Any, prompt: str, chosen: str, rejected: str
) -> None:
    """Whatever merges happen at the boundary, shared prompt + answer (minus the EOS we add)
    re-tokenise exactly as the whole text, and no answer is empty."""
    tok = tiny_tokenizer
    out = tokenize_pairs([prompt], [chosen], [rejected], tok, lengths())
    if out.drop[0] is not None:
        assert out.drop[0] in ("identical_answers", "prompt_boundary")
        return
    p, c, r = out.prompt_input_ids[0], out.chosen_input_ids[0], out.rejected_input_ids[0]
    assert p[0] == tok.bos_token_id and c and r
    assert p[1:] + c[:-1] == ids(tok, prompt + chosen)
    assert p[1:] + r[:-1] == ids(tok, prompt + rejected)
    assert len(ids(tok, prompt)) - (len(p) - 1) <= 1


# ---- what None means: no limit (the schema's meaning; TRL falls back to 512 / 128) ----------


def test_max_length_none_truncates_nothing(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    prompt = "Question: " + " ".join(f"w{i}" for i in range(300)) + "\nAnswer:"
    answer = " " + " ".join(f"a{i}" for i in range(200))
    pair = one(tok, prompt, answer, " no", max_length=None)
    assert len(pair.prompt) + len(pair.chosen) > 512  # beyond TRL's fallback
    assert not pair.truncated and pair.drop is None
    assert pair.prompt[1:] == ids(tok, prompt)
    assert pair.chosen == [*ids(tok, answer), tok.eos_token_id]


def test_encoder_decoder_max_completion_length_none_keeps_whole_answers(
    tiny_tokenizer: Any,
) -> None:
    tok = tiny_tokenizer
    answer = " " + " ".join(f"a{i}" for i in range(150))
    pair = one(
        tok, "Translate: the cat", answer, " le chien",
        is_encoder_decoder=True, max_completion_length=None,
    )  # fmt: skip
    assert len(pair.chosen) > 128  # beyond TRL's fallback
    assert not pair.truncated and pair.drop is None
    assert pair.chosen == [*ids(tok, answer), tok.eos_token_id]


# ---- encoder-decoder -------------------------------------------------------------------------


def test_encoder_decoder_cuts_answers_keeping_eos(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    answer = " " + " ".join(f"a{i}" for i in range(30))
    pair = one(
        tok, "Translate: the cat", answer, " le chien",
        is_encoder_decoder=True, max_completion_length=8, max_prompt_length=4,
    )  # fmt: skip
    assert pair.drop is None and pair.truncated
    assert len(pair.chosen) == 8 and pair.chosen[-1] == tok.eos_token_id
    assert pair.chosen[:7] == ids(tok, answer)[:7]
    assert pair.rejected == [*ids(tok, " le chien"), tok.eos_token_id]
    assert pair.prompt == ids(tok, "Translate: the cat")[-4:]  # keep_end


# ---- parity with TRL 1.16 on data that needs no truncation ----------------------------------


def _trl_tokenize(tok: Any, feature: dict[str, str], max_length: int = 1024) -> dict[str, Any]:
    """TRL's own `CPOTrainer.tokenize_row`, called without building a trainer."""
    from accelerate import PartialState
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    PartialState()  # TRL's warnings go through accelerate's logger, which needs a state
    fake_self = SimpleNamespace(
        processing_class=tok, is_encoder_decoder=False, max_length=max_length
    )
    fake_self.build_tokenized_answer = functools.partial(
        CPOTrainer.build_tokenized_answer, fake_self
    )
    return dict(CPOTrainer.tokenize_row(fake_self, feature))


def test_matches_trl_tokenize_row_on_the_demo_data(
    tiny_tokenizer: Any, demo_train_path: Path
) -> None:
    tok = tiny_tokenizer
    rows = [json.loads(line) for line in demo_train_path.read_text().splitlines()[:120]]
    ours = tokenize_pairs(
        [r["prompt"] for r in rows],
        [r["chosen"] for r in rows],
        [r["rejected"] for r in rows],
        tok,
        lengths(),
    )
    for i, row in enumerate(rows):
        trl = _trl_tokenize(tok, row)
        prompt = ours.prompt_input_ids[i]
        assert prompt == trl["prompt_input_ids"]
        assert prompt + ours.chosen_input_ids[i] == trl["chosen_input_ids"]
        assert prompt + ours.rejected_input_ids[i] == trl["rejected_input_ids"]
        n_masked = trl["chosen_labels"].count(-100)
        assert n_masked == len(prompt)


def test_matches_trl_on_a_boundary_merge_of_both_answers(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    row = {"prompt": "The capital of France is ", "chosen": "Paris.", "rejected": "Lyon."}
    trl = _trl_tokenize(tok, row)
    pair = one(tok, row["prompt"], row["chosen"], row["rejected"])
    assert pair.prompt == trl["prompt_input_ids"]
    assert pair.prompt + pair.chosen == trl["chosen_input_ids"]
    assert pair.prompt + pair.rejected == trl["rejected_input_ids"]


@pytest.mark.parametrize("max_length", [12])
def test_differs_from_trl_where_trl_emits_an_empty_answer(
    tiny_tokenizer: Any, max_length: int
) -> None:
    tok = tiny_tokenizer
    row = {"prompt": "Question: " + "w " * 20 + "\nAnswer:", "chosen": " yes", "rejected": " no"}
    trl = _trl_tokenize(tok, row, max_length=max_length)
    assert trl["chosen_labels"].count(-100) == len(trl["chosen_labels"])  # TRL: nothing to learn
    pair = one(tok, **row, max_length=max_length, max_prompt_length=max_length)
    assert pair.drop == "no_answer_room"


def test_conversational_differs_from_trl_only_by_the_doubled_end_marker(
    tiny_tokenizer: Any, demo_data_dir: Path
) -> None:
    """TRL appends EOS after ChatML's `<|im_end|>\\n`; we end the answer at `<|im_end|>`.
    Everything else (template, prompt, answer tokens) is identical."""
    from trl.data_utils import maybe_apply_chat_template

    from cpo_cli.data.formats import TextNormaliser
    from cpo_cli.data.rows import RowOptions

    tok = tiny_tokenizer
    path = demo_data_dir / "demo_train_conversational.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:40]]
    newline = ids(tok, "\n")
    normalise = TextNormaliser(tok, RowOptions(), str(path))
    for row in rows:
        trl_text = maybe_apply_chat_template(row, tok)
        ours_text = normalise(row)
        assert (ours_text.prompt, ours_text.chosen) == (trl_text["prompt"], trl_text["chosen"])
        trl = _trl_tokenize(tok, trl_text)
        pair = one(tok, ours_text.prompt, ours_text.chosen, ours_text.rejected)
        assert trl["prompt_input_ids"] == pair.prompt
        assert trl["chosen_input_ids"] == pair.prompt + pair.chosen + newline + [tok.eos_token_id]


class _MergingTokenizer:
    """A stand-in tokenizer whose prompt tokens change completely once an answer follows."""

    bos_token_id = None
    eos_token_id = 0
    vocab: ClassVar[dict[str, list[int]]] = {"ab": [1, 2], "abc": [9, 3], "abd": [1, 2, 4]}

    def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(self.vocab[t]) for t in texts]}

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        return "x"


def test_prompt_that_changes_by_more_than_one_token_is_dropped() -> None:
    out = tokenize_pairs(["ab"], ["c"], ["d"], _MergingTokenizer(), lengths())
    assert out.drop == ["prompt_boundary"]
    out = tokenize_pairs(["ab"], ["d"], ["d"], _MergingTokenizer(), lengths())
    assert out.drop == ["identical_answers"]
    assert out.chosen_input_ids[0] == [4, 0] and out.prompt_input_ids[0] == [1, 2]
