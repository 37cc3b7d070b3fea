"""Model FLOPs of a training step, for the achieved FLOP/s and MFU the log and benchmarks show.

The count is the standard one (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B)
applied to the work a step must do whatever the engine: every pair as its two plain sequences
`prompt | chosen` and `prompt | rejected` (2p + c + r tokens), each token through every matmul
of the model forward and backward, 6·N FLOPs with N the parameters of the layers' matmuls plus
the LM head (embeddings and norms excluded); and causal attention, 6·L·d·T² per sequence of
T tokens (QKᵀ and AV over the causal half, forward and backward; d = heads × head_dim).
Prefix sharing and the answer-only LM head skip part of that work, so cpo's "model FLOP/s" can
exceed what the hardware executes: MFU here is useful work per second against the machine's
peak (`benchmarks/bench_mfu.py` measures the dense matmul peak and caches it).
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
class FlopsModel:
    """Per-token dense FLOPs and the attention coefficient of one model."""

    dense_per_token: float  # 6 · N (matmul parameters incl. the LM head)
    attention_per_sq_token: float  # 6 · L · d: times Σ T² over the sequences

    def step_flops(self, plain_tokens: int, sum_sq_lengths: int) -> float:
        return self.dense_per_token * plain_tokens + self.attention_per_sq_token * sum_sq_lengths


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
    n = layers * (attention + mlp) + hidden * vocab_size
    return FlopsModel(6.0 * n, 6.0 * layers * q_out)


def plain_sequence_sizes(prompt: int, chosen: int, rejected: int) -> tuple[int, int]:
    """(tokens, Σ T²) of one pair as its two plain sequences."""
    a, b = prompt + chosen, prompt + rejected
    return a + b, a * a + b * b


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
        if self.model is not None:
            self.flops += self.model.step_flops(sizes["plain_tokens"], sizes["sum_sq"])

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
