"""The recipe language: schema (model / data / peft / training), loading with overrides and
interpolation, cross-field rules, field status, secret redaction and docs generation.
Imports no torch: `cpo recipe validate` stays fast."""

from cpo_cli.recipe.dump import recipe_dict, redact, redacted_dict, to_yaml
from cpo_cli.recipe.loader import LoadedRecipe, load_recipe, load_recipe_dict, load_recipe_text
from cpo_cli.recipe.schema import DataSection, DataSource, ModelSection, PeftSection, Recipe
from cpo_cli.recipe.status import FieldStatus, field_status
from cpo_cli.recipe.training import CPO_EXTENSIONS, TrainingConfig

__all__ = [
    "CPO_EXTENSIONS",
    "DataSection",
    "DataSource",
    "FieldStatus",
    "LoadedRecipe",
    "ModelSection",
    "PeftSection",
    "Recipe",
    "TrainingConfig",
    "field_status",
    "load_recipe",
    "load_recipe_dict",
    "load_recipe_text",
    "recipe_dict",
    "redact",
    "redacted_dict",
    "to_yaml",
]
