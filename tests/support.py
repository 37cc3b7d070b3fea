"""Helpers shared by the tests (importable as `support`: pytest puts this folder on sys.path
beside conftest.py). Fixtures live in conftest.py; plain functions and classes live here."""

from __future__ import annotations

from typing import Any

from cpo_cli.recipe import TrainingConfig


def make_training(**fields: Any) -> TrainingConfig:
    """A real `training` section: the schema's defaults, with `fields` set (validated)."""
    return TrainingConfig(**fields)
