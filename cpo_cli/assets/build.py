"""Builder of tiny, deterministic test assets: a BPE tokenizer trained on the demo data (with a
ChatML-like chat template and bos/eos/pad), and random-init decoder-only / encoder-decoder models.

They let every test and the offline demo run in seconds on a CPU without the Hub.
Usage: `python -m cpo_cli.assets.build OUT_DIR` writes `tokenizer/`, `llama/`, `qwen2/`, `t5/`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"

BOS = "<s>"
EOS = "<|im_end|>"
PAD = "<pad>"
UNK = "<unk>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IM_START]

#: ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per turn; the generation prompt opens an
#: assistant turn. Same shape as SmolLM2/Qwen2 templates, so tests exercise the real boundary.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_VOCAB_SIZE = 1024


def _corpus_lines() -> list[str]:
    """Every text of the demo data, also rendered as ChatML, so frequent pieces become tokens."""
    lines: list[str] = []
    for path in sorted(DATA_DIR.glob("demo_*.jsonl")):
        for raw in path.read_text(encoding="utf-8").splitlines():
            _collect_strings(json.loads(raw), lines)
    chat = [f"{IM_START}user\n{t}{EOS}\n{IM_START}assistant\n" for t in lines[:200]]
    return lines + chat


def _collect_strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect_strings(v, out)


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train a byte-level BPE tokenizer on the demo data and save it as a transformers folder.

    Byte-level, so every string is encodable (no unknown tokens) and a prompt ending in a space
    merges with the answer's first word — the boundary case the data layer must handle.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def _ensure_tokenizer(tokenizer_dir: str | Path | None, out: Path) -> Any:
    from transformers import AutoTokenizer

    src = Path(tokenizer_dir) if tokenizer_dir else build_tiny_tokenizer(out / "_tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(src)
    if not tokenizer_dir:
        shutil.rmtree(src)
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    tokenizer_dir: str | Path | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """A random-init decoder-only model (`llama` or `qwen2`) with the tokenizer copied in."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _ensure_tokenizer(tokenizer_dir, out)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config: Any = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}: use 'llama' or 'qwen2'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_reward_model(
    out_dir: str | Path, *, tokenizer_dir: str | Path | None = None, seed: int = 0
) -> Path:
    """A random-init tiny Llama sequence classifier with one output: a reward model for the
    judge's tests (`cpo eval --reward-model`), the chat-template tokenizer copied in."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _ensure_tokenizer(tokenizer_dir, out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = 1  # one output: a reward
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_seq2seq(
    out_dir: str | Path, *, tokenizer_dir: str | Path | None = None, seed: int = 0
) -> Path:
    """A random-init tiny T5 (encoder-decoder) with the tokenizer copied in."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, T5Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _ensure_tokenizer(tokenizer_dir, out)
    t5_fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = T5Config(**t5_fields)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_all(out_dir: str | Path) -> dict[str, Path]:
    """Every tiny asset under `out_dir` (the tokenizer shared by all models)."""
    out = Path(out_dir)
    tok = build_tiny_tokenizer(out / "tokenizer")
    return {
        "tokenizer": tok,
        "llama": build_tiny_model(out / "llama", "llama", tokenizer_dir=tok),
        "qwen2": build_tiny_model(out / "qwen2", "qwen2", tokenizer_dir=tok),
        "t5": build_tiny_seq2seq(out / "t5", tokenizer_dir=tok),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cpo_cli.assets.build OUT_DIR")
    for name, path in build_all(sys.argv[1]).items():
        print(f"{name}: {path}")
