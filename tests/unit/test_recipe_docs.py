"""docs/recipe-reference.md is generated from the schema and must be current."""

from __future__ import annotations

from cpo_cli.recipe import TrainingConfig
from cpo_cli.recipe.docs import DOC_PATH, REGENERATE, render


def test_reference_doc_is_current() -> None:
    assert DOC_PATH.exists(), f"{DOC_PATH} is missing; generate it with `{REGENERATE}`"
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        f"{DOC_PATH.name} is stale; regenerate it with `{REGENERATE}` and commit it"
    )


def test_reference_lists_every_training_field_with_status() -> None:
    text = render()
    for name in TrainingConfig.model_fields:
        row = next(line for line in text.splitlines() if line.startswith(f"| `training.{name}` |"))
        assert "honoured" in row or "not applicable" in row, row
