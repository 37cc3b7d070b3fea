"""Shared fixtures: tiny tokenizer/models built once per session, the shipped demo data, the CLI
run in-process through its real entry point, a private cache folder, and a loopback Hub.
Plain helpers (the recipe writer, the Hub stand-in, a child-process CLI) are in support.py.

Nothing here touches the network: the Hub is switched off before any Hugging Face import (the
`online` fixture turns the client back on for loopback-only tests).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import FakeHub, Result

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
def tiny_reward_model_dir(tiny_assets_root: Path, tiny_tokenizer_dir: Path) -> Path:
    """Tiny random Llama sequence classifier with one output (a reward model), ChatML tokenizer."""
    from cpo_cli.assets.build import build_tiny_reward_model

    return build_tiny_reward_model(tiny_assets_root / "reward", tokenizer_dir=tiny_tokenizer_dir)


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


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`cpo ARGS` in this process through `cpo_cli.cli.run`, the function the `cpo` script
    calls: Typer's parsing, the domain errors turned into messages, and the exit codes."""
    from cpo_cli.cli import run

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cpo_cache")


@pytest.fixture(scope="module")
def private_cache(cache_folder: Path) -> Iterator[Path]:
    """`CPO_CACHE` points at one session-wide temporary folder while a module's tests run:
    prepared data and converted models never land in ~/.cache (entries are keyed by file,
    settings and tokenizer, so sharing them between tests is safe)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CPO_CACHE", str(cache_folder))
        yield cache_folder


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub client switched back on (conftest switched it off at import) for tests that talk
    to loopback only; no token from the environment."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake_hub(online: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A `FakeHub` on loopback that `HF_ENDPOINT` points at."""
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    yield hub
    hub.stop()
