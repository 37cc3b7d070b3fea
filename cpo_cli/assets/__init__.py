"""Shipped demo data, the tiny test-asset builder and the SmolLM2 GGUF locator.

Importing this package imports no heavy library; the builders import them when called.
"""

from __future__ import annotations

from pathlib import Path

#: The shipped demo preference data (see `make_demo_data.py` for what each file holds).
DEMO_DATA_DIR = Path(__file__).parent / "data"
DEMO_TRAIN = DEMO_DATA_DIR / "demo_train.jsonl"
DEMO_EVAL = DEMO_DATA_DIR / "demo_eval.jsonl"
