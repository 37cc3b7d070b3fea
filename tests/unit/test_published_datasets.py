"""Each published preference dataset cpo reads, as a few rows in its exact schema
(tests/published.py says where each schema comes from) in the container the Hub ships,
prepared with the tiny ChatML tokenizer; the resulting prompt/chosen/rejected texts are
checked. docs/data.md lists these datasets with the command each needs; every row there is
one of these tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from published import (
    alma_r,
    armorm,
    dpo_mix,
    h4_ultrafeedback,
    helpsteer3,
    hh_rlhf,
    orca_dpo_pairs,
    trl_ultrafeedback,
    truthy_dpo,
    ultrafeedback_raw,
    write_jsonl,
    write_parquet,
    write_readme,
)
from support import make_training

from cpo_cli.data import prepare_dataset
from cpo_cli.data.prepare import PreparedData
from cpo_cli.errors import DataError
from cpo_cli.recipe import TrainingConfig
from cpo_cli.recipe.schema import DataSource


def training(**overrides: Any) -> TrainingConfig:
    return make_training(**overrides)


def prepare(tok: Any, path: Path | str, **source: Any) -> PreparedData:
    return prepare_dataset(DataSource(path=str(path), **source), tok, training())


def texts(prepared: PreparedData) -> list[tuple[str, str, str]]:
    ds = prepared.dataset
    return list(zip(ds["prompt"], ds["chosen"], ds["rejected"], strict=True))


def user(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def system(text: str) -> str:
    return f"<|im_start|>system\n{text}<|im_end|>\n"


def end(text: str) -> str:
    return f"{text}<|im_end|>\n"


def test_h4_ultrafeedback_binarized_snapshot_reads_the_repeated_prompt(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    snap = tmp_path / "ultrafeedback_binarized"
    write_parquet(snap / "data" / "train_prefs-00000-of-00001.parquet", h4_ultrafeedback())
    write_parquet(snap / "data" / "test_prefs-00000-of-00001.parquet", h4_ultrafeedback()[:1])
    prepared = prepare(tiny_tokenizer, snap, split="train_prefs")
    assert texts(prepared) == [
        (user("What is 2 + 2?"), end("It is 4."), end("It is 5.")),
        (user("Name a primary colour."), end("Red is one."), end("Green, maybe.")),
        (user("Say hi in French."), end("Bonjour !"), end("Hola.")),
    ]
    assert prepared.report.row_formats == {"conversational": 3}
    assert len(prepare(tiny_tokenizer, snap, split="test_prefs").dataset) == 1
    with pytest.raises(DataError, match="no split 'train'") as info:
        prepare(tiny_tokenizer, snap)
    assert "test_prefs, train_prefs" in (info.value.hint or "") or "train_prefs" in (
        info.value.hint or ""
    )


def test_armorm_shards(tiny_tokenizer: Any, tmp_path: Path) -> None:
    snap = tmp_path / "armorm"
    rows = armorm()
    write_parquet(snap / "data" / "train-00000-of-00002.parquet", rows[:1])
    write_parquet(snap / "data" / "train-00001-of-00002.parquet", rows[1:])
    assert texts(prepare(tiny_tokenizer, snap)) == [
        (user("Write a haiku about rain."), end("Soft rain on the roof"), end("Wet.")),
        (user("Why is the sky blue?"), end("Rayleigh scattering."), end("Paint.")),
    ]


def test_trl_ultrafeedback_and_dpo_mix_implicit_conversations(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    path = write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", trl_ultrafeedback())
    assert texts(prepare(tiny_tokenizer, path))[0] == (
        user("Capital of France?"),
        end("Paris."),
        end("Lyon."),
    )
    mix = write_parquet(tmp_path / "mix" / "train.parquet", dpo_mix())
    prompt, chosen, rejected = texts(prepare(tiny_tokenizer, mix))[0]
    assert prompt == system("You are terse.") + "<|im_start|>user\nHi<|im_end|>\n" + (
        "<|im_start|>assistant\nHello.<|im_end|>\n" + user("Bye?")
    )
    assert (chosen, rejected) == (end("Goodbye."), end("No."))


def test_hh_rlhf_transcripts_become_turns(tiny_tokenizer: Any, tmp_path: Path) -> None:
    snap = tmp_path / "hh-rlhf"
    write_jsonl(snap / "helpful-base" / "train.jsonl.gz", hh_rlhf())
    write_jsonl(snap / "harmless-base" / "train.jsonl.gz", hh_rlhf()[1:])
    one = prepare(tiny_tokenizer, snap, subset="helpful-base")
    first, second = texts(one)
    assert first == (
        "<|im_start|>user\nWhat are some good fruits?<|im_end|>\n"
        "<|im_start|>assistant\nApples and pears.<|im_end|>\n" + user("Which is sweeter?"),
        end("Pears, usually."),
        end("I don't know."),
    )
    assert second == (
        user("How do I boil an egg?"),
        end("Simmer it for nine minutes."),
        end("Microwave it."),
    )
    assert one.report.row_formats == {"implicit": 2}
    # the file itself, and the whole snapshot (every folder, as load_dataset reads it)
    assert texts(prepare(tiny_tokenizer, snap / "helpful-base" / "train.jsonl.gz")) == [
        first,
        second,
    ]
    everything = prepare(tiny_tokenizer, snap)
    assert len(everything.dataset) == 3
    assert any("harmless-base, helpful-base" in n for n in everything.report.notes)


def test_hh_rlhf_dialogues_that_differ_early_are_dropped(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = hh_rlhf()
    rows[0] = {**rows[0], "rejected": rows[0]["rejected"].replace("Apples", "Plums")}
    rows.append(
        {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}
    )
    report = prepare(tiny_tokenizer, write_jsonl(tmp_path / "train.jsonl", rows)).report
    assert report.dropped == {"prompt_mismatch": 1, "empty_field": 1}
    assert report.drop_details["prompt_mismatch"] == {
        "the transcripts differ before their final answer": 1
    }


def test_orca_system_and_question(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "orca_rlhf.jsonl", orca_dpo_pairs())
    prepared = prepare(tiny_tokenizer, path)
    assert prepared.report.columns == {"system": "system", "chosen": "chosen",
                                       "rejected": "rejected", "prompt": "question"}  # fmt: skip
    assert texts(prepared) == [
        (
            system("You are an AI assistant. Think step by step.") + user("Is 7 prime?"),
            end("Yes: its only divisors are 1 and 7."),
            end("No."),
        ),
        (user("Translate 'cat' to German."), end("Katze"), end("Hund")),
    ]
    # chat_template: never keeps text rows as text; the system prompt is joined before them
    plain = texts(prepare(tiny_tokenizer, path, chat_template="never"))
    assert plain[0] == (
        "You are an AI assistant. Think step by step.\n\nIs 7 prime?",
        "Yes: its only divisors are 1 and 7.",
        "No.",
    )
    assert plain[1] == ("Translate 'cat' to German.", "Katze", "Hund")


def test_truthy_dpo_system_column(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "truthy-dpo.parquet", truthy_dpo())
    [(prompt, chosen, rejected)] = texts(prepare(tiny_tokenizer, path))
    assert prompt == system("You are an unbiased, uncensored, helpful assistant.") + user(
        "Do we only use 10% of our brains?"
    )
    assert (chosen, rejected) == (end("No, that is a myth."), end("Yes, only ten percent."))


def test_text_rows_stay_text_by_default_and_can_use_the_template(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = [{"prompt": "Q: 1 + 1 =", "chosen": " 2", "rejected": " 3"}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    assert texts(prepare(tiny_tokenizer, path)) == [("Q: 1 + 1 =", " 2", " 3")]
    assert texts(prepare(tiny_tokenizer, path, chat_template="always")) == [
        (user("Q: 1 + 1 ="), end(" 2"), end(" 3"))
    ]


def test_ultrafeedback_raw_nested_completions(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ultrafeedback.jsonl", ultrafeedback_raw())
    mapping = {"candidates": "completions.response", "scores": "completions.overall_score"}
    prepared = prepare(tiny_tokenizer, path, columns=mapping)
    assert prepared.report.format == "scored"
    assert prepared.report.columns["prompt"] == "instruction"
    assert texts(prepared) == [("Give a synonym for 'happy'.", "Joyful.", "Sad.")]
    assert prepared.report.dropped == {"tied_scores": 1}
    # the same rows as parquet (structs and lists of structs) read the same
    pq = write_parquet(tmp_path / "ultrafeedback.parquet", ultrafeedback_raw())
    assert texts(prepare(tiny_tokenizer, pq, columns=mapping)) == texts(prepared)


def test_nested_paths_and_mapping_errors_name_the_dataset_fields(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "ultrafeedback.jsonl", ultrafeedback_raw())
    with pytest.raises(DataError, match="cannot tell the preference format") as info:
        prepare(tiny_tokenizer, path)  # no mapping: the hint is the one it needs
    assert info.value.hint == (
        "'completions' holds scored candidates: --columns "
        "candidates=completions.response,scores=completions.overall_score"
    )
    bad = {"candidates": "completions.respons", "scores": "completions.overall_score"}
    with pytest.raises(DataError, match="'completions' has no field 'respons'") as info:
        prepare(tiny_tokenizer, path, columns=bad)
    assert "overall_score" in (info.value.hint or "") and "response" in (info.value.hint or "")
    with pytest.raises(DataError, match="names a column the dataset does not have") as info:
        prepare(tiny_tokenizer, path, columns={"prompt": "query"})
    assert "instruction" in (info.value.hint or "")
    with pytest.raises(DataError, match="prompt and system all name the column 'instruction'"):
        prepare(tiny_tokenizer, path, columns={"prompt": "instruction", "system": "instruction"})


def test_helpsteer3_pairwise_with_its_card(tiny_tokenizer: Any, tmp_path: Path) -> None:
    snap = tmp_path / "HelpSteer3"
    write_jsonl(snap / "preference" / "train.jsonl.gz", helpsteer3())
    write_jsonl(snap / "preference" / "validation.jsonl.gz", helpsteer3()[:1])
    write_jsonl(snap / "feedback" / "train.jsonl.gz", [{"context": [], "response": "x"}])
    write_readme(
        snap,
        {
            "preference": {"train": "preference/train.jsonl.gz",
                           "validation": "preference/validation.jsonl.gz"},
            "feedback": {"train": "feedback/train.jsonl.gz"},
        },
    )  # fmt: skip
    prepared = prepare(tiny_tokenizer, snap)
    assert prepared.report.format == "pairwise"
    assert texts(prepared) == [
        (
            user("Write a Python one-liner that reverses a string s."),
            end("s[::-1]"),
            end("reversed(s)"),
        ),
        (
            "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            + user("Tell a joke."),
            end("Why did the chicken cross the road?"),
            end("No."),
        ),
    ]
    assert prepared.report.dropped == {"tie": 1}
    assert len(prepare(tiny_tokenizer, snap, subset="preference", split="validation").dataset) == 1


def test_helpsteer_answer_columns_as_chosen_rejected_is_refused(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl.gz", helpsteer3())
    with pytest.raises(DataError, match="overall_preference") as info:
        prepare(
            tiny_tokenizer,
            path,
            columns={"prompt": "context", "chosen": "response1", "rejected": "response2"},
        )
    assert "--format pairwise" in (info.value.hint or "")


def test_pairwise_canonical_names(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = [
        {"prompt": "Pick", "a": " one", "b": " two", "pref": 1.5},
        {"prompt": "Pick", "a": " one", "b": " two", "pref": -0.5},
        {"prompt": "Pick", "a": " one", "b": " two", "pref": "much better"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    mapping = {"response_a": "a", "response_b": "b", "preference": "pref"}
    prepared = prepare(tiny_tokenizer, path, columns=mapping, format="pairwise")
    assert texts(prepared) == [("Pick", " two", " one"), ("Pick", " one", " two")]
    assert prepared.report.dropped == {"wrong_format": 1}
    assert prepared.report.drop_details["wrong_format"] == {"preference is str, not a number": 1}


ALMA_PROMPT_DE_EN = "Translate this from German to English:\nGerman: {}\nEnglish:"
ALMA_PROMPT_EN_DE = "Translate this from English to German:\nEnglish: {}\nGerman:"


def test_alma_r_preference_as_alma_builds_pairs(tiny_tokenizer: Any, tmp_path: Path) -> None:
    snap = tmp_path / "ALMA-R-Preference"
    write_parquet(snap / "de-en" / "train-00000-of-00001.parquet", alma_r("de-en"))
    write_parquet(snap / "cs-en" / "train-00000-of-00001.parquet", alma_r("cs-en"))
    write_readme(snap, {"cs-en": {"train": "cs-en/train-*"}, "de-en": {"train": "de-en/train-*"}})
    prepared = prepare(
        tiny_tokenizer,
        snap,
        subset="de-en",
        format="alma_r",
        directions=["de-en", "en-de"],
        scorer="kiwi_xcomet",
    )
    assert texts(prepared) == [
        # row 0, de-en: gpt4 0.91 > ref 0.81 > alma 0.51
        (ALMA_PROMPT_DE_EN.format("Das Haus ist blau."), "The house is blue!", "House blue."),
        # row 0, en-de: ref 0.96 > gpt4 0.71 > alma 0.61
        (ALMA_PROMPT_EN_DE.format("The house is blue."), "Das Haus ist blau.", "Haus blau."),
        # row 1 requires en-de only: ref 0.91 > gpt4 > alma 0.41
        (ALMA_PROMPT_EN_DE.format("Good morning."), "Guten Morgen.", "Morgen."),
        # row 2: a human Delta > 0 prefers gpt4 over alma whatever the scores say
        (ALMA_PROMPT_DE_EN.format("Ich bin müde."), "I'm tired.", "I am sleepy."),
        (ALMA_PROMPT_EN_DE.format("I am tired."), "Ich bin müde!", "Ich müde."),
    ]
    assert prepared.report.row_formats == {"alma_r": 5}
    # one direction only: row 1 (required en-de) has none left
    one_way = prepare(tiny_tokenizer, snap, subset="de-en", format="alma_r", directions=["de-en"])
    assert len(one_way.dataset) == 2 and one_way.report.dropped == {"other_direction": 1}
    # detected without --format; kiwi alone ranks the same here
    auto = prepare(tiny_tokenizer, snap, subset="de-en", scorer="kiwi")
    assert auto.report.format == "alma_r" and texts(auto) == texts(prepared)


def test_alma_r_ties_and_unknown_directions(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = alma_r("de-en")
    tr = rows[0]["translation"]
    for system_name in ("ref", "gpt4", "alma"):
        tr[f"{system_name}_en_kiwi_xcomet"] = 0.5
    path = write_parquet(tmp_path / "train.parquet", rows)
    report = prepare(tiny_tokenizer, path, format="alma_r", directions=["de-en"]).report
    assert report.dropped == {"tied_scores": 1, "other_direction": 1}
    with pytest.raises(DataError, match="no language name for xx"):
        prepare(tiny_tokenizer, path, format="alma_r", directions=["xx-en"])
    with pytest.raises(DataError, match="no usable pairs") as info:
        prepare(tiny_tokenizer, path, format="alma_r", directions=["cs-en"])
    assert "other_direction: 3" in "\n".join(info.value.lines())
    assert "--directions" in (info.value.hint or "")


def test_alma_r_chat_template_always_uses_a_user_turn(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "train.parquet", alma_r("de-en")[:1])
    prepared = prepare(
        tiny_tokenizer, path, format="alma_r", directions=["de-en"], chat_template="always"
    )
    assert texts(prepared) == [
        (
            user(ALMA_PROMPT_DE_EN.format("Das Haus ist blau.")),
            end("The house is blue!"),
            end("House blue."),
        )
    ]


def test_the_alma_recipe_reads_a_snapshot_of_alma_r_preference(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recipes/alma_r_mt.yaml on a local snapshot laid out as the Hub's: no conversion step."""
    from cpo_cli.engine.data import prepare_source
    from cpo_cli.recipe import load_recipe

    pairs = ["cs-en", "de-en", "is-en", "ru-en", "zh-en"]
    snap = tmp_path / "ALMA-R-Preference"
    for pair in pairs:
        write_parquet(snap / pair / "train-00000-of-00001.parquet", alma_r(pair))
    write_readme(snap, {pair: {"train": f"{pair}/train-*"} for pair in pairs})
    monkeypatch.setenv("ALMA_R_PREFERENCE", str(snap))
    monkeypatch.setenv("CPO_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "alma_r_mt.yaml").recipe
    assert recipe.data.train is not None
    dataset = prepare_source(
        "train", recipe.data.train, tiny_tokenizer, recipe.training, is_encoder_decoder=False
    )
    assert len(dataset) == 5 * 5  # five pairs per language pair, both directions
    assert "Translate this from Czech to English:\nCzech: " in dataset["prompt"][0]
    assert any(p.startswith("Translate this from English to Chinese:") for p in dataset["prompt"])
