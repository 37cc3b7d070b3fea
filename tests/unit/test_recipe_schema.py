"""`training` mirrors every CPOConfig field of the seed (tests/data/cpoconfig_fields.tsv): same
names, same defaults, None accepted where CPOConfig accepted it."""

from __future__ import annotations

import ast
import csv
import types
import typing
from pathlib import Path

import pytest

from cpo_cli.losses.registry import LOSS_NAMES
from cpo_cli.recipe import CPO_EXTENSIONS, Recipe, TrainingConfig
from cpo_cli.recipe.choices import choices
from cpo_cli.recipe.training import cpoconfig_field_names

TSV = Path(__file__).parents[1] / "data" / "cpoconfig_fields.tsv"


def _rows() -> list[dict[str, str]]:
    with TSV.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _rows()


def test_tsv_has_146_fields() -> None:
    assert len(ROWS) == 146


def test_every_cpoconfig_field_and_nothing_else() -> None:
    # same order too, so the reference doc reads like CPOConfig's own
    assert list(cpoconfig_field_names()) == [r["name"] for r in ROWS]
    assert set(TrainingConfig.model_fields) == {r["name"] for r in ROWS} | set(CPO_EXTENSIONS)


def _seed_default(text: str, name: str) -> object:
    if text == "<factory>":
        # CPOConfig's two factories: lr_scheduler_kwargs -> {}, include_for_metrics -> []
        return {} if name == "lr_scheduler_kwargs" else []
    return ast.literal_eval(text)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["name"])
def test_default_matches_seed(row: dict[str, str]) -> None:
    ours = TrainingConfig().__getattribute__(row["name"])
    seed = _seed_default(row["default"], row["name"])
    assert ours == seed, f"{row['name']}: ours {ours!r}, seed {seed!r}"
    # bool is an int: require the same type, except int/float for numbers
    numbers = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    assert type(ours) is type(seed) or (numbers and type(ours) in (int, float))


def _allows_none(annotation: object) -> bool:
    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_allows_none(a) for a in typing.get_args(annotation))
    return False


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["name"])
def test_optional_where_seed_is_optional(row: dict[str, str]) -> None:
    seed_optional = "Optional" in row["type"] or "NoneType" in row["type"]
    ours = _allows_none(TrainingConfig.model_fields[row["name"]].annotation)
    assert ours == seed_optional, row


def test_extensions_defaults() -> None:
    t = TrainingConfig()
    assert (t.alpha, t.prefix_sharing, t.logprob_chunk_size) == (0.0, True, 256)
    assert (t.enable_jit_checkpoint, t.max_nonfinite_steps) == (True, 3)


@pytest.mark.parametrize("value", [True, False, "last", "auto", "out/checkpoint-20", None])
def test_resume_from_checkpoint_takes_what_hf_users_write(value: object) -> None:
    """`true` (as HF users write it), `last`, `auto`, a path; TRL 1.16's enable_jit_checkpoint."""
    from cpo_cli.recipe import load_recipe_dict

    training = {"resume_from_checkpoint": value, "enable_jit_checkpoint": False}
    loaded = load_recipe_dict({"model": {"name_or_path": "m"}, "training": training})
    assert loaded.recipe.training.resume_from_checkpoint == value


def test_max_nonfinite_steps_is_at_least_one() -> None:
    from cpo_cli.errors import RecipeError
    from cpo_cli.recipe import load_recipe_dict

    with pytest.raises(RecipeError) as caught:
        load_recipe_dict({"model": {"name_or_path": "m"}, "training": {"max_nonfinite_steps": 0}})
    assert caught.value.problems == ["training.max_nonfinite_steps: got 0; expected a value >= 1"]


def test_loss_type_choices_come_from_the_registry() -> None:
    assert choices(TrainingConfig.model_fields["loss_type"].annotation) == LOSS_NAMES


def test_every_field_has_a_description() -> None:
    missing = [n for n, f in TrainingConfig.model_fields.items() if not f.description]
    assert missing == []


def test_top_level_keys_are_fixed() -> None:
    assert list(Recipe.model_fields) == ["model", "data", "peft", "training"]


def test_trust_remote_code_defaults_to_false() -> None:
    r = Recipe.model_validate({"model": {"name_or_path": "x"}})
    assert r.model.trust_remote_code is False
    assert r.peft is None and r.data.train is None


def test_json_schema_is_generated() -> None:
    schema = Recipe.model_json_schema()
    props = schema["$defs"]["TrainingConfig"]["properties"]
    assert props["loss_type"]["enum"] == list(LOSS_NAMES)
    assert schema["additionalProperties"] is False


def test_none_lengths_say_no_limit() -> None:
    """The decided meaning of None for the lengths, as the reference shows it (the tokeniser's
    behaviour is pinned in test_tokenize.py)."""
    fields = TrainingConfig.model_fields
    assert "None: no limit" in (fields["max_length"].description or "")
    assert "None: answers are not truncated" in (fields["max_completion_length"].description or "")
    assert "None: the prompt is not cut" in (fields["max_prompt_length"].description or "")
