"""Loading: YAML -> overrides -> interpolation -> validation, every problem at once, one line
each, with the exact wording users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpo_cli.errors import RecipeError
from cpo_cli.recipe import load_recipe, load_recipe_dict, load_recipe_text

MINIMAL = "model:\n  name_or_path: org/model\n"


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, overrides, source="r.yaml")
    return info.value.problems


def test_minimal_recipe_gets_every_default(tmp_path: Path) -> None:
    loaded = load_recipe(write(tmp_path, MINIMAL))
    assert loaded.recipe.model.name_or_path == "org/model"
    assert loaded.recipe.training.beta == 0.1
    assert loaded.recipe.training.loss_type == "sigmoid"
    assert loaded.warnings == []
    assert loaded.source.endswith("r.yaml")


def test_overrides_win_and_parse_types(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  beta: 0.5\n")
    loaded = load_recipe(
        path,
        [
            "training.beta=0.2",
            "model.name_or_path=/some/dir",
            "training.report_to=[wandb,tensorboard]",
            "data.train.path=x.jsonl",
            "training.data_seed=null",
        ],
    )
    r = loaded.recipe
    assert r.training.beta == 0.2
    assert r.model.name_or_path == "/some/dir"
    assert r.training.report_to == ["wandb", "tensorboard"]
    assert r.data.train is not None and r.data.train.path == "x.jsonl"
    assert loaded.overrides[0] == "training.beta=0.2"


def test_interpolation_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPO_TEST_OUT", "/tmp/out")
    text = (
        MINIMAL
        + "training:\n  output_dir: ${oc.env:CPO_TEST_OUT}\n"
        + "  run_name: run-${training.beta}\n  logging_dir: ${oc.env:CPO_UNSET_VAR,logs}\n"
    )
    r = load_recipe_text(text, ["training.beta=0.3"]).recipe
    assert r.training.output_dir == "/tmp/out"
    assert r.training.run_name == "run-0.3"  # interpolation sees the override
    assert r.training.logging_dir == "logs"


def test_every_problem_is_reported_at_once() -> None:
    text = (
        MINIMAL
        + "trainig: {}\n"
        + "training:\n  betta: 0.2\n  loss_type: sigmod\n  learning_rate: fast\n  beta: -1\n"
        + "  run_name: ${oc.env:CPO_SURELY_UNSET}\n"
    )
    found = problems(text, ("oops",))
    assert len(found) == 7, found
    assert (
        "override 'oops': expected key=value with a dotted key, e.g. training.beta=0.2 or "
        "model.name_or_path=/some/dir" in found
    )
    assert (
        "training.loss_type: got 'sigmod'; expected one of 'sigmoid', 'hinge', 'ipo', 'simpo' "
        "or 'alphapo' (did you mean 'sigmoid'?)" in found
    )
    assert "training.betta: unknown key (got 0.2); did you mean 'training.beta'?" in found
    assert "trainig: unknown key (got {}); did you mean 'training'?" in found
    assert "training.learning_rate: got 'fast'; expected a number" in found
    assert "training.beta: got -1; expected a value > 0" in found
    assert (
        "training.run_name: environment variable CPO_SURELY_UNSET is not set; export it or give "
        "a default, e.g. ${oc.env:CPO_SURELY_UNSET,default}" in found
    )


def test_error_header_counts_problems() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe_text("model: {}\ntraining: {beta: x}\n", source="a.yaml")
    lines = info.value.lines()
    assert lines[0] == "a.yaml: 2 problems in the recipe"
    assert lines[1:] == [
        "  - model.name_or_path: required but missing",
        "  - training.beta: got 'x'; expected a number",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learning_rate: 1.0e-5\n" + MINIMAL, "did you mean 'training.learning_rate'?"),
        (MINIMAL + "training: {lerning_rate: 1}\n", "did you mean 'training.learning_rate'?"),
        (MINIMAL + "data: {train: {path: x, spilt: test}}\n", "did you mean 'data.train.split'?"),
        ("model: {name_or_path: x, dtyp: float32}\n", "did you mean 'model.dtype'?"),
        (MINIMAL + "training: {name_or_path: x}\n", "did you mean 'model.name_or_path'?"),
        (MINIMAL + "data: {train: {path: x, columns: {promt: q}}}\n", "did you mean 'prompt'?"),
        (MINIMAL + "training: {report_to: [wandb, tensorbord]}\n", "did you mean 'tensorboard'?"),
        (MINIMAL + "training: {lr_scheduler_type: cosin}\n", "did you mean 'cosine'?"),
    ],
)
def test_did_you_mean(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_unknown_key_in_a_small_section_lists_the_allowed_keys() -> None:
    found = problems(MINIMAL + "peft: {rank: 8}\n")
    assert found == [
        "peft.rank: unknown key (got 8); allowed keys: r, lora_alpha, lora_dropout, "
        "target_modules, bias, modules_to_save, merge_at_end"
    ]


def test_union_errors_are_merged_into_one_line() -> None:
    found = problems(MINIMAL + "training: {report_to: 3}\n")
    assert len(found) == 1 and found[0].startswith("training.report_to: got 3; expected one of")
    assert found[0].endswith("or a list")


def test_list_item_paths() -> None:
    found = problems(MINIMAL + "training: {report_to: [wandb, 7]}\n")
    assert found[0].startswith("training.report_to[1]: got 7")


def test_json_string_for_mapping_fields() -> None:
    r = load_recipe_text(MINIMAL, ['training.lr_scheduler_kwargs={"min_lr": 1e-7}']).recipe
    assert r.training.lr_scheduler_kwargs == {"min_lr": 1e-7}
    found = problems(MINIMAL + "training: {lr_scheduler_kwargs: '[1'}\n")
    assert found[0].startswith("training.lr_scheduler_kwargs: got '[1'; expected not a JSON")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert info.value.problems == ["file not found; pass the path of a .yaml recipe"]


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path)
    assert "is a folder" in info.value.problems[0]


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "model:\n  name_or_path: [x\n"))
    (problem,) = info.value.problems
    assert problem.startswith("not valid YAML: line 3, column 1:")


def test_not_a_mapping() -> None:
    found = problems("- a\n- b\n")
    assert found == ["the recipe must be a mapping with the keys model, data, peft, training"]


def test_missing_mandatory_value() -> None:
    found = problems("model:\n  name_or_path: ???\n")
    assert found == [
        "model.name_or_path: value is missing (???); set it in the file or with an override"
    ]


def test_bad_override_value() -> None:
    found = problems(MINIMAL, ("training.report_to=[wandb",))
    assert found[0].startswith("override 'training.report_to=[wandb': cannot parse the value")


def test_empty_file_needs_a_model() -> None:
    assert problems("") == ["model: required but missing"]


def test_load_recipe_dict() -> None:
    loaded = load_recipe_dict({"model": {"name_or_path": "m"}}, ["training.max_steps=5"])
    assert loaded.recipe.training.max_steps == 5


@pytest.mark.parametrize("name", ["alma_r_mt.yaml", "simpo.yaml", "ultrafeedback_cpo.yaml"])
def test_resolved_yaml_round_trips(name: str) -> None:
    """What cpo saves beside a checkpoint loads back to the same recipe, without new warnings."""
    from cpo_cli.recipe import to_yaml

    recipes = Path(__file__).parents[2] / "recipes"
    first = load_recipe(recipes / name)
    again = load_recipe_text(to_yaml(first, redact=False))
    assert again.recipe.model_dump() == first.recipe.model_dump()
    assert again.warnings == []


def test_prefix_suggestion_beats_fuzzy_match() -> None:
    found = problems(MINIMAL + "training: {optim: adamw}\n")
    assert found[0].endswith("(did you mean 'adamw_torch'?)")


def test_unknown_interpolation_key() -> None:
    found = problems(MINIMAL + "training:\n  run_name: ${training.nope}\n")
    assert found == [
        "training.run_name: cannot resolve the interpolation: Interpolation key "
        "'training.nope' not found"
    ]


@pytest.mark.parametrize("text", ["hello\n", "42\n", "- a\n- b\n"])
def test_scalar_or_list_documents_are_refused(text: str) -> None:
    assert problems(text) == [
        "the recipe must be a mapping with the keys model, data, peft, training"
    ]


def test_duplicate_keys_are_refused() -> None:
    found = problems("model: {name_or_path: a}\nmodel: {name_or_path: b}\n")
    assert found == ["not valid YAML: line 2, column 1: found duplicate key model"]


def test_a_list_of_sources_and_overrides_that_replace_the_shape() -> None:
    text = MINIMAL + "data:\n  train: {path: a.jsonl, split: test}\n"
    loaded = load_recipe_text(text, ["data.train=[{path: b.jsonl, weight: 2}, c.jsonl]"])
    train = loaded.recipe.data.train
    assert isinstance(train, list) and [(s.path, s.weight) for s in train] == [
        ("b.jsonl", 2.0),
        ("c.jsonl", 1.0),
    ]
    back = load_recipe_text(MINIMAL + "data:\n  train: [a.jsonl]\n", ["data.train={path: z}"])
    assert back.recipe.data.train is not None and not isinstance(back.recipe.data.train, list)
    found = problems(MINIMAL + "data:\n  train: [{path: a, weight: 0}, {path: b, spilt: x}]\n")
    assert found == [
        "data.train[0].weight: got 0; expected a value > 0",
        "data.train[1].spilt: unknown key (got 'x'); did you mean 'data.train[1].split'?",
    ]
    assert problems(MINIMAL + "data:\n  train: []\n") == [
        "data.train: got []; expected at least one source (or no data.train/data.eval key at all)"
    ]
