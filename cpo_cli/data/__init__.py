"""Preference data: sources, format detection and normalisation, chat template, tokenisation
and truncation, reports, the prepared-folder manifest, and collation.

Importing this package imports no heavy library (datasets/transformers load inside functions).
"""

from __future__ import annotations

from cpo_cli.data.prepare import PreparedData, load_prepared, prepare_dataset, save_prepared
from cpo_cli.data.report import PrepareReport
from cpo_cli.data.tokenize import LengthSettings

__all__ = [
    "LengthSettings",
    "PrepareReport",
    "PreparedData",
    "load_prepared",
    "prepare_dataset",
    "save_prepared",
]
