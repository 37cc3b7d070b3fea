"""A recipe as plain data or YAML, with secrets redacted unless asked otherwise. This is what is
printed by `cpo recipe show` and written beside checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cpo_cli.recipe.schema import Recipe
from cpo_cli.recipe.secrets import redact_mapping

if TYPE_CHECKING:
    from cpo_cli.recipe.loader import LoadedRecipe


def _unwrap(obj: Recipe | LoadedRecipe) -> Recipe:
    return obj if isinstance(obj, Recipe) else obj.recipe


def recipe_dict(obj: Recipe | LoadedRecipe) -> dict[str, Any]:
    """The full resolved recipe as plain data (every default filled in), secrets included."""
    return _unwrap(obj).model_dump(mode="json")


def redacted_dict(obj: Recipe | LoadedRecipe | Mapping[str, Any]) -> dict[str, Any]:
    """Plain data with every secret replaced by `***` (also copies of a secret elsewhere)."""
    if isinstance(obj, Mapping):
        return redact_mapping(obj)
    recipe = _unwrap(obj)
    return redact_mapping(recipe.model_dump(mode="json"), recipe._secret_paths)


#: the architecture's name for it
redact = redacted_dict


def to_yaml(obj: Recipe | LoadedRecipe, redact: bool = True) -> str:
    """The resolved recipe as YAML, sections in their fixed order; redacted by default."""
    import yaml

    data = redacted_dict(obj) if redact else recipe_dict(obj)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def changed_only(obj: Recipe | LoadedRecipe) -> str:
    """YAML of the values that differ from the schema defaults (redacted): what a recipe really
    asks for, e.g. to compare two runs."""
    import yaml

    recipe = _unwrap(obj)
    data = redact_mapping(
        recipe.model_dump(mode="json", exclude_defaults=True), recipe._secret_paths
    )
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
