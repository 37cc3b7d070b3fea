"""Every shipped recipe (found with rglob, so subfolders count) validates without warnings and
starts with a comment header saying what it is for and what it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpo_cli.recipe import load_recipe

RECIPES = Path(__file__).parents[2] / "recipes"
FILES = sorted([*RECIPES.rglob("*.yaml"), *RECIPES.rglob("*.yml")])


def test_recipes_are_found() -> None:
    names = {f.name for f in FILES}
    assert {
        "ultrafeedback_cpo.yaml",
        "simpo.yaml",
        "cpo_simpo.yaml",
        "ipo.yaml",
        "hinge.yaml",
        "alma_r_mt.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_validates_without_warnings(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.warnings == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_has_a_comment_header(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, f"{path.name}: start with a comment saying what it is for and needs"


def test_variant_recipes_use_their_loss() -> None:
    loss = {f.name: load_recipe(f).recipe.training for f in FILES}
    assert loss["simpo.yaml"].loss_type == "simpo" and loss["simpo.yaml"].cpo_alpha == 0
    assert loss["cpo_simpo.yaml"].loss_type == "simpo" and loss["cpo_simpo.yaml"].cpo_alpha > 0
    assert loss["ipo.yaml"].loss_type == "ipo"
    assert loss["hinge.yaml"].loss_type == "hinge"


def test_alma_recipe_reads_alma_r_preference_and_uses_lora() -> None:
    recipe = load_recipe(RECIPES / "alma_r_mt.yaml").recipe
    assert isinstance(recipe.data.train, list)
    assert {s.format for s in recipe.data.train} == {"alma_r"}
    assert [s.subset for s in recipe.data.train] == ["cs-en", "de-en", "is-en", "ru-en", "zh-en"]
    assert recipe.peft is not None
