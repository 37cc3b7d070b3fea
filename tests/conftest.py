"""Shared fixtures: tiny tokenizer/models built once per session, and the shipped demo data.

Nothing here touches the network: the Hub is switched off before any Hugging Face import.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from cpo_cli.assets import DEMO_DATA_DIR


@pytest.fixture(scope="session")
def tiny_assets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_assets")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_assets_root: Path) -> Path:
    """Byte-level BPE (1024 tokens), bos `<s>`, eos `<|im_end|>`, pad `<pad>`, ChatML template."""
    from cpo_cli.assets.build import build_tiny_tokenizer

    return build_tiny_tokenizer(tiny_assets_root / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_assets_root: Path, tiny_tokenizer_dir: Path) -> Path:
    """Tiny random Llama (hidden 64, 2 layers, 4 heads, sdpa), tokenizer included."""
    from cpo_cli.assets.build import build_tiny_model

    return build_tiny_model(tiny_assets_root / "llama", "llama", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_assets_root: Path, tiny_tokenizer_dir: Path) -> Path:
    from cpo_cli.assets.build import build_tiny_model

    return build_tiny_model(tiny_assets_root / "qwen2", "qwen2", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tiny_assets_root: Path, tiny_tokenizer_dir: Path) -> Path:
    """Tiny random T5 (d_model 64, 2+2 layers), tokenizer included."""
    from cpo_cli.assets.build import build_tiny_seq2seq

    return build_tiny_seq2seq(tiny_assets_root / "t5", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def demo_data_dir() -> Path:
    return DEMO_DATA_DIR


@pytest.fixture(scope="session")
def demo_train_path() -> Path:
    """300 standard prompt/chosen/rejected pairs."""
    return DEMO_DATA_DIR / "demo_train.jsonl"


@pytest.fixture(scope="session")
def demo_eval_path() -> Path:
    """60 held-out standard pairs."""
    return DEMO_DATA_DIR / "demo_eval.jsonl"
