"""Which batch layout a model takes, observed once per model rather than assumed.

The layout (`cpo_cli.data.collate`) follows the model's attention implementation:
- `sdpa` / `eager`: `packed`, one row per pair under a dense `[B, 1, T, T]` additive mask;
- `flex_attention`: `flat`, every pair in one unpadded row under a FlexAttention `BlockMask`
  built from the pair and segment ids (the kernel skips blocks outside each pair);
- any other kernel (`flash_attention_2/3`, hub kernels) takes no custom mask: `varlen`, every
  sequence in one row with position ids restarting per sequence (padding-free, no sharing).
Whether a model honours its layout is checked once per model with a small probe (the layout vs
plain rows must agree), never assumed; models that fail it, MoE models (their router loss is
defined on plain rows) and encoder-decoders use `pair_rows`, with one warning saying why. The
probe also checks that our LM-head path reproduces the model's logits (`head_ok`).

The probe runs the model through `engine.model_run`, the module below it; `engine.forward`
sits above and reads `model_support` to run each batch the way the probe found works.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine.model_queries import (
    DENSE_MASK_ATTENTION,
    FLEX_ATTENTION,
    accepts,
    attention_implementation,
    compute_dtype,
    core_model,
    head_vocab_size,
    is_encoder_decoder,
    model_device,
    router_loss_enabled,
    runs_in_half_precision,
    text_config,
    to_device,
)
from cpo_cli.engine.model_run import run_model, run_sequence_logps

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cpo_cli.data.collate import Layout

_PROBE_TOL = {"float32": 1e-4, "float64": 1e-6}
_HALF_TOL = 2e-2  # bf16/fp16 weights, or fp32 weights under autocast
_SUPPORT: weakref.WeakKeyDictionary[Any, _Support] = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()  # models whose fallback was announced


@dataclass(frozen=True)
class _Support:
    head_ok: bool  # our LM-head path reproduces the model's logits
    layout: Layout  # the layout its attention takes, when it gives plain rows' hidden states
    varlen_ok: bool  # one row of sequences with restarting position ids agrees with plain rows
    reason: str  # why prefix sharing is not used (empty when it is)

    @property
    def packed_ok(self) -> bool:
        """Prefix sharing (`packed` or `flat`) is possible."""
        return self.layout in ("packed", "flat")


def choose_layout(model: nn.Module, *, prefix_sharing: bool = True) -> Layout:
    """The batch layout for this model: what its attention implementation takes (`packed` for
    sdpa/eager, `flat` for flex_attention, `varlen` for flash-attention kernels) when the probe
    shows it agrees with plain rows, else `pair_rows`, with one warning saying why.
    `prefix_sharing: false` keeps only the layouts without sharing (`varlen`, `pair_rows`)."""
    support = model_support(model)
    layout = support.layout
    if not prefix_sharing and layout in ("packed", "flat"):
        padding_free = support.varlen_ok and attention_implementation(model) == FLEX_ATTENTION
        layout = "varlen" if padding_free else "pair_rows"
    if prefix_sharing and support.reason:
        core = core_model(model)
        if core not in _WARNED:
            _WARNED.add(core)
            what = "plain rows" if layout == "pair_rows" else f"`{layout}` rows"
            console.warn(f"prefix sharing is off for this model: {support.reason}; using {what}")
    return layout


def model_support(model: nn.Module) -> _Support:
    """What this model supports, probed once per model object and cached."""
    core = core_model(model)
    cached = _SUPPORT.get(core)
    if cached is None:
        cached = _probe(model, core)
        _SUPPORT[core] = cached
        if not cached.head_ok and not is_encoder_decoder(core):
            console.warn(
                "this model's logits are not its LM head applied to its last hidden state; "
                "log-probs use the model's full logits (exact, but more memory)"
            )
    return cached


def _probe(model: nn.Module, core: Any) -> _Support:
    """Run a 2-pair batch in plain rows and in the layouts this model's attention could take,
    and compare, so support is observed rather than assumed."""
    import torch

    if is_encoder_decoder(core):
        return _Support(
            False, "pair_rows", False, "encoder-decoder models run prompt and answer separately"
        )
    vocab = head_vocab_size(core)
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(1, max(2, vocab), (12,), generator=g)).tolist()
    prompt, rejected = ids[:4], ids[4:7]
    rows = [
        {"prompt_input_ids": prompt, "chosen_input_ids": ids[7:9], "rejected_input_ids": rejected},
        {"prompt_input_ids": prompt, "chosen_input_ids": ids[9:12], "rejected_input_ids": rejected},
    ]
    device = model_device(core)
    plain = to_device(collate_pairs_for_probe(rows, "pair_rows"), device)
    # under mixed precision the layouts' matmuls round differently in bf16/fp16: half tolerance
    weights = str(compute_dtype(core)).removeprefix("torch.")
    tol = _HALF_TOL if runs_in_half_precision(model) else _PROBE_TOL.get(weights, _HALF_TOL)
    impl = attention_implementation(core)
    sharing: Layout | None = (
        "packed" if impl in DENSE_MASK_ATTENTION else "flat" if impl == FLEX_ATTENTION else None
    )
    was_training = core.training
    core.eval()
    try:
        with torch.no_grad():
            reference = run_sequence_logps(model, core, plain, 64, use_head=False).logps
            ours = run_sequence_logps(model, core, plain, 64, use_head=True).logps
            head_ok = _close(ours, reference, tol)
            h_plain = _answer_hidden(model, core, plain)
            if sharing is None:
                reason = f"attn_implementation {impl!r} takes no custom attention mask"
            else:
                reason = _static_packed_problem(core) or _mismatch(
                    model, core, rows, sharing, h_plain, tol
                )
            varlen_ok = not _static_varlen_problem(core) and not _mismatch(
                model, core, rows, "varlen", h_plain, tol
            )
    finally:
        core.train(was_training)
    if sharing is not None and not reason:
        layout: Layout = sharing
    elif varlen_ok and impl not in DENSE_MASK_ATTENTION:
        # under sdpa/eager the varlen mask would be one dense [T, T] over the whole batch
        layout = "varlen"
    else:
        layout = "pair_rows"
    return _Support(head_ok, layout, varlen_ok, reason)


def collate_pairs_for_probe(rows: list[dict[str, list[int]]], layout: Layout) -> Any:
    from cpo_cli.data.collate import collate_pairs

    return collate_pairs(rows, pad_token_id=0, layout=layout)


def _mismatch(
    model: nn.Module,
    core: Any,
    rows: list[dict[str, list[int]]],
    layout: Layout,
    h_plain: torch.Tensor,
    tol: float,
) -> str:
    """Why `layout` disagrees with plain rows (empty string: it agrees)."""
    batch = to_device(collate_pairs_for_probe(rows, layout), model_device(core))
    try:
        h_layout = _answer_hidden(model, core, batch)
    except Exception as exc:  # a model that rejects the mask or the position ids
        return f"its forward failed on a `{layout}` batch ({type(exc).__name__}: {exc})"
    if not _close(h_layout, h_plain, tol):
        if layout == "varlen":
            return "it does not restart attention where the position ids restart"
        return "it does not honour a custom 4D attention mask and position ids"
    return ""


def _answer_hidden(model: nn.Module, core: Any, batch: dict[str, torch.Tensor]) -> Any:
    """Last hidden states at the answer-predicting positions, ordered by (sequence, token)."""
    import torch

    out = run_model(model, core, batch, want_hidden=True)
    h = out.hidden_states[-1][batch["target_rows"], batch["target_cols"]]
    order = torch.sort(batch["target_seqs"], stable=True).indices
    return h[order].float()


def _static_varlen_problem(core: Any) -> str:
    if router_loss_enabled(core):
        return "the MoE router loss is defined on plain rows"
    if not accepts(core, "position_ids"):
        return "its forward takes no position_ids"
    return ""


def _static_packed_problem(core: Any) -> str:
    """Reasons known without running the model (empty string: none)."""
    problem = _static_varlen_problem(core)
    if problem:
        return problem
    text = text_config(core)
    layer_types = set(getattr(text, "layer_types", None) or [])
    if len(layer_types) > 1:
        return f"it mixes attention types {sorted(layer_types)} under one mask"
    return ""


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    import torch

    if a.shape != b.shape or not torch.isfinite(a).all():
        return False
    scale = float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * max(scale, 1.0)))
