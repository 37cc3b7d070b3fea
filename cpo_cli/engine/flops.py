"""Model FLOPs of a training step, for the achieved FLOP/s and MFU the log and benchmarks show.

The count is the standard one (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B):
6 FLOPs per parameter per token through a matmul (forward and backward), plus causal
attention, 12·L·d per query-key product (QKᵀ and AV, forward and backward; d = heads ×
head_dim); embeddings and norms excluded. It is applied to the work a preference loss *needs*,
whatever the engine: every distinct token of a pair once through the layers (the prompt once,
not once per answer), the LM head only at the positions that predict answer tokens (the loss
reads no other logits), and each answer attending to its prompt and its own earlier tokens.
Work an engine adds beyond that (the prompt twice, the head over prompts, padding, recomputation
in the backward) counts as waste, so MFU is at most 1 and TRL and cpo are measured against the
same count. `benchmarks/bench_mfu.py` measures the machine's dense matmul peak and caches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: where `benchmarks/bench_mfu.py` writes the measured peak (FLOP/s by dtype and device)
PEAK_FILE = "matmul_peak.json"


@dataclass(frozen=True)
class PairWork:
    """What a batch of pairs needs computed: tokens through the layers, positions through the LM
    head, and query-key products of causal attention (per layer and head dimension)."""

    layer_tokens: int = 0
    head_tokens: int = 0
    attention_products: int = 0

    def __add__(self, other: PairWork) -> PairWork:
        return PairWork(
            self.layer_tokens + other.layer_tokens,
            self.head_tokens + other.head_tokens,
            self.attention_products + other.attention_products,
        )


def pair_work(prompt: int, chosen: int, rejected: int) -> PairWork:
    """One pair: the prompt's tokens once, the head at the answers' positions, attention of the
    prompt over itself and of each answer over the prompt and its own earlier tokens (a causal
    sequence of T tokens has T(T+1)/2 products)."""

    def causal(t: int) -> int:
        return t * (t + 1) // 2

    answers = chosen + rejected
    attention = causal(prompt + chosen) + causal(prompt + rejected) - causal(prompt)
    return PairWork(prompt + answers, answers, attention)


@dataclass(frozen=True)
class FlopsModel:
    """FLOPs per token of the layers and of the LM head, and per attention product."""

    layer_per_token: float  # 6 · N_layers (the decoder layers' matmul parameters)
    head_per_token: float  # 6 · hidden · vocab
    attention_per_product: float  # 6 · 2 · L · d: QKᵀ and AV, forward and backward

    def step_flops(self, work: PairWork) -> float:
        return (
            self.layer_per_token * work.layer_tokens
            + self.head_per_token * work.head_tokens
            + self.attention_per_product * work.attention_products
        )


def flops_model(config: Any, vocab_size: int) -> FlopsModel:
    """From a transformers decoder config (Llama/Qwen2/Mistral-like field names)."""
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    inter = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    gated = str(getattr(config, "hidden_act", "silu")) in ("silu", "swish", "gelu_pytorch_tanh")
    mlp = (3 if gated else 2) * hidden * inter
    return FlopsModel(
        layer_per_token=6.0 * layers * (attention + mlp),
        head_per_token=6.0 * hidden * vocab_size,
        attention_per_product=12.0 * layers * q_out,
    )


def peak_flops(device: str, dtype: str) -> float | None:
    """The machine's dense matmul peak (FLOP/s) for `dtype`: `CPO_PEAK_FLOPS` when set, else
    the value `benchmarks/bench_mfu.py` measured and cached, else None."""
    if os.environ.get("CPO_PEAK_FLOPS"):
        return float(os.environ["CPO_PEAK_FLOPS"])
    root = os.environ.get("CPO_CACHE")
    path = (Path(root) if root else Path.home() / ".cache" / "cpo") / PEAK_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        return float(table[device][dtype])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StepFlops:
    """Model FLOPs of the micro-batches since the last log, and the FLOP/s and MFU they make."""

    def __init__(self, model: Any, device_type: str, precision: str) -> None:
        from cpo_cli.engine.forward import model_config, vocab_size

        try:
            self.model: FlopsModel | None = flops_model(model_config(model), vocab_size(model))
        except (AttributeError, TypeError, ValueError):  # a config without these fields
            self.model = None
        self.peak = peak_flops(device_type, precision)
        self.flops = 0.0

    def add(self, sizes: dict[str, int]) -> None:
        """Count a micro-batch from the sizes `engine.data` counted at collation."""
        if self.model is not None:
            work = PairWork(
                sizes["layer_tokens"], sizes["head_tokens"], sizes["attention_products"]
            )
            self.flops += self.model.step_flops(work)

    def report(self, seconds: float) -> dict[str, float]:
        """`tflops/s` (and `mfu` with a known peak) since the last report; then restart."""
        if self.model is None:
            return {}
        achieved = self.flops / max(seconds, 1e-9)
        self.flops = 0.0
        out = {"tflops/s": round(achieved / 1e12, 4)}
        if self.peak:
            out["mfu"] = round(achieved / self.peak, 4)
        return out
