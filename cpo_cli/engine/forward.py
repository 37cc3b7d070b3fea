"""The log-prob forward: per-sequence answer log-probabilities without full-vocabulary logits.

TRL computes `[2B, T, V]` float32 logits and log-softmaxes all of them, although only the
answer tokens are scored. Here the model body runs once (the model's own forward, asked for
its last hidden state and for logits at a single position), the hidden states at the
answer-predicting positions are gathered, and the LM head + float32 log-softmax run on those
positions only, `chunk_size` at a time (`cpo_cli.engine.chunked_head`: no `[N, V]` softmax is
kept for the backward pass). Token log-probs are summed per sequence with `index_add`.

Prefix sharing runs each pair as `prompt | chosen | rejected` with position ids that restart
rejected at the end of the prompt, and a mask in which rejected never sees chosen. The batch
layout (`cpo_cli.data.collate`) follows the model's attention implementation:
- `sdpa` / `eager`: `packed`, one row per pair under a dense `[B, 1, T, T]` additive mask;
- `flex_attention`: `flat`, every pair in one unpadded row under a FlexAttention `BlockMask`
  built from the pair and segment ids (the kernel skips blocks outside each pair);
- any other kernel (`flash_attention_2/3`, hub kernels) takes no custom mask: `varlen`, every
  sequence in one row with position ids restarting per sequence (padding-free, no sharing).
Whether a model honours its layout is checked once per model with a small probe (the layout vs
plain rows must agree), never assumed; models that fail it, MoE models (their router loss is
defined on plain rows) and encoder-decoders use `pair_rows`, with one warning saying why.

`logits/chosen` / `logits/rejected`: TRL 1.16 averages the raw logits over every position of
the padded chosen (rejected) rows — prompt and padding included — and the whole vocabulary,
so its value depends on how the batch was padded. We define it as the mean raw logit over the
answer-predicting positions and the whole vocabulary (after any final logit soft-capping):
the positions whose logits the loss uses, independent of padding and layout.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpo_cli import console

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cpo_cli.data.collate import Layout

#: attention implementations that take a custom dense 4D mask
DENSE_MASK_ATTENTION = ("sdpa", "eager")
FLEX_ATTENTION = "flex_attention"

_PROBE_TOL = {"float32": 1e-4, "float64": 1e-6}  # other dtypes (bf16, fp16): 2e-2
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


@dataclass
class SequenceLogps:
    """Per-sequence results of one forward; index i < B is chosen pair i, B + i rejected pair i."""

    #: [2B] float32 summed log-probs of the answer tokens (differentiable)
    logps: torch.Tensor
    #: [2B] number of scored answer tokens
    token_counts: torch.Tensor
    #: [2B] float32 sum of raw logits over answer-predicting positions × vocabulary (detached)
    logit_sums: torch.Tensor
    vocab_size: int
    #: MoE router load-balancing loss (None for dense models)
    aux_loss: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.logps.shape[0]) // 2

    def averaged(self) -> torch.Tensor:
        """[2B] per-token mean log-probs (ipo, simpo)."""
        return self.logps / self.token_counts.clamp(min=1)

    def chosen_nll(self) -> torch.Tensor:
        """Token-mean NLL over all chosen answer tokens of the batch (the CPO BC term)."""
        from cpo_cli.losses.total import chosen_nll

        b = self.num_pairs
        return chosen_nll(self.logps[:b].sum(), self.token_counts[:b].sum())

    def mean_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) mean raw logit over answer-predicting positions and the vocabulary."""
        b = self.num_pairs
        counts = self.token_counts.to(self.logit_sums.dtype) * self.vocab_size
        return (
            self.logit_sums[:b].sum() / counts[:b].sum().clamp(min=1),
            self.logit_sums[b:].sum() / counts[b:].sum().clamp(min=1),
        )


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------


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
        core = _core_model(model)
        if core not in _WARNED:
            _WARNED.add(core)
            what = "plain rows" if layout == "pair_rows" else f"`{layout}` rows"
            console.warn(f"prefix sharing is off for this model: {support.reason}; using {what}")
    return layout


def model_support(model: nn.Module) -> _Support:
    """What this model supports, probed once per model object and cached."""
    core = _core_model(model)
    cached = _SUPPORT.get(core)
    if cached is None:
        cached = _probe(model, core)
        _SUPPORT[core] = cached
        if not cached.head_ok and not _is_encoder_decoder(core):
            console.warn(
                "this model's logits are not its LM head applied to its last hidden state; "
                "log-probs use the model's full logits (exact, but more memory)"
            )
    return cached


def sequence_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int
) -> SequenceLogps:
    """Summed answer log-probs per sequence for a `collate_pairs` batch (either layout);
    `chunk_size` is the recipe's `training.logprob_chunk_size` (no default here)."""
    core = _core_model(model)
    support = model_support(model)
    return _sequence_logps(model, core, batch, chunk_size, use_head=support.head_ok)


def model_config(model: nn.Module) -> Any:
    """The (text) config of the transformers model under any DDP/FSDP/PEFT wrapper."""
    return _text_config(_core_model(model))


def vocab_size(model: nn.Module) -> int:
    """The LM head's output size (the model's vocabulary)."""
    return _vocab_size(_core_model(model))


def packed_attention_mask(
    segment_ids: torch.Tensor,
    dtype: torch.dtype,
    *,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    pair_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, 1, T, T] additive mask for `prompt | chosen | rejected` rows.

    A query sees an earlier (or the same) column whose segment is the prompt (0) or its own
    (and, with `pair_ids`, of its own pair); padding (-1) sees only itself, so no softmax row is
    empty. With a sliding window, keys further back than the window in *position* (not column)
    are hidden too.
    """
    import torch

    t = segment_ids.shape[1]
    col = torch.arange(t, device=segment_ids.device)
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (col[:, None] >= col[None, :]) & ((seg_k == 0) | (seg_k == seg_q))
    if pair_ids is not None:
        allowed &= pair_ids[:, :, None] == pair_ids[:, None, :]
    allowed &= (seg_q >= 0) & (seg_k >= 0)
    if sliding_window is not None and position_ids is not None:
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < sliding_window
    allowed |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


# ---------------------------------------------------------------------------------------------
# the forward
# ---------------------------------------------------------------------------------------------


def _sequence_logps(
    model: nn.Module,
    core: Any,
    batch: dict[str, torch.Tensor],
    chunk_size: int,
    *,
    use_head: bool,
) -> SequenceLogps:
    import torch

    from cpo_cli.engine.chunked_head import token_logps_and_logit_sums

    n_seqs = _num_sequences(batch)
    rows, cols = batch["target_rows"], batch["target_cols"]
    outputs = _run_model(model, core, batch, want_hidden=use_head)
    if use_head:
        head, source = core.get_output_embeddings(), outputs.hidden_states[-1]
    else:
        head, source = None, outputs.logits
    token_logps, logit_sums = token_logps_and_logit_sums(
        source[rows, cols], batch["target_ids"], head, _softcap(core), chunk_size
    )
    seqs = batch["target_seqs"]
    zeros = torch.zeros(n_seqs, dtype=torch.float32, device=token_logps.device)
    aux = getattr(outputs, "aux_loss", None) if _router_loss_enabled(core) else None
    return SequenceLogps(
        logps=zeros.index_add(0, seqs, token_logps),
        token_counts=torch.bincount(seqs, minlength=n_seqs),
        logit_sums=zeros.index_add(0, seqs, logit_sums),
        vocab_size=int(_vocab_size(core)),
        aux_loss=aux,
    )


def _num_sequences(batch: dict[str, torch.Tensor]) -> int:
    """2B, read from tensor shapes (never from values: no device sync)."""
    if "pair_lengths" in batch:  # flat
        return 2 * int(batch["pair_lengths"].shape[0])
    if "seq_lengths" in batch:  # varlen
        return int(batch["seq_lengths"].shape[0])
    rows = int(batch["input_ids"].shape[0])
    return 2 * rows if "segment_ids" in batch else rows  # packed: one row per pair


def _run_model(
    model: nn.Module, core: Any, batch: dict[str, torch.Tensor], *, want_hidden: bool
) -> Any:
    """The model's own forward (so DDP/FSDP wrappers and PEFT hooks run as usual)."""
    kwargs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),  # varlen: none, the positions say it
        "use_cache": False,
    }
    if "segment_ids" in batch:
        kwargs["attention_mask"] = _sharing_mask(core, batch)
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "decoder_input_ids" in batch:
        kwargs["decoder_input_ids"] = batch["decoder_input_ids"]
        kwargs["decoder_attention_mask"] = batch["decoder_attention_mask"]
    if want_hidden:
        kwargs["output_hidden_states"] = True
        if _accepts(core, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1  # the model's own head runs at one position only
    if _router_loss_enabled(core):
        kwargs["output_router_logits"] = True
    if attention_implementation(core) == FLEX_ATTENTION and _device(core).type == "cpu":
        import torch

        if torch.is_grad_enabled() and core.training:
            from cpo_cli.errors import ModelLoadError

            raise ModelLoadError(
                "model.attn_implementation: flex_attention has no backward pass on a CPU "
                "(torch's FlexAttention), so it cannot train here",
                hint="use model.attn_implementation=sdpa on a CPU; flex_attention trains on GPUs",
            )
        # inductor's CPU FlexAttention template fails to compile with symbolic lengths
        # (torch 2.13): compile each length statically instead of going dynamic
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return model(**kwargs)
    return model(**kwargs)


def _sharing_mask(core: Any, batch: dict[str, torch.Tensor]) -> Any:
    """The prefix-sharing mask of a `packed` or `flat` batch in the form the model's attention
    takes: a FlexAttention BlockMask under flex_attention, else a dense additive 4D mask."""
    window = _sliding_window(core)
    if attention_implementation(core) == FLEX_ATTENTION:
        from cpo_cli.engine.flex import sharing_block_mask

        return sharing_block_mask(
            batch["segment_ids"],
            batch.get("pair_ids"),
            position_ids=batch["position_ids"],
            sliding_window=window,
        )
    return packed_attention_mask(
        batch["segment_ids"],
        _compute_dtype(core),
        position_ids=batch["position_ids"],
        sliding_window=window,
        pair_ids=batch.get("pair_ids"),
    )


# ---------------------------------------------------------------------------------------------
# what a model supports
# ---------------------------------------------------------------------------------------------


def _probe(model: nn.Module, core: Any) -> _Support:
    """Run a 2-pair batch in plain rows and in the layouts this model's attention could take,
    and compare, so support is observed rather than assumed."""
    import torch

    if _is_encoder_decoder(core):
        return _Support(
            False, "pair_rows", False, "encoder-decoder models run prompt and answer separately"
        )
    vocab = _vocab_size(core)
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(1, max(2, vocab), (12,), generator=g)).tolist()
    prompt, rejected = ids[:4], ids[4:7]
    rows = [
        {"prompt_input_ids": prompt, "chosen_input_ids": ids[7:9], "rejected_input_ids": rejected},
        {"prompt_input_ids": prompt, "chosen_input_ids": ids[9:12], "rejected_input_ids": rejected},
    ]
    device = _device(core)
    plain = _to(collate_pairs_for_probe(rows, "pair_rows"), device)
    tol = _PROBE_TOL.get(str(_compute_dtype(core)).removeprefix("torch."), 2e-2)
    impl = attention_implementation(core)
    sharing: Layout | None = (
        "packed" if impl in DENSE_MASK_ATTENTION else "flat" if impl == FLEX_ATTENTION else None
    )
    was_training = core.training
    core.eval()
    try:
        with torch.no_grad():
            reference = _sequence_logps(model, core, plain, 64, use_head=False).logps
            ours = _sequence_logps(model, core, plain, 64, use_head=True).logps
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
    batch = _to(collate_pairs_for_probe(rows, layout), _device(core))
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

    out = _run_model(model, core, batch, want_hidden=True)
    h = out.hidden_states[-1][batch["target_rows"], batch["target_cols"]]
    order = torch.sort(batch["target_seqs"], stable=True).indices
    return h[order].float()


def _static_varlen_problem(core: Any) -> str:
    if _router_loss_enabled(core):
        return "the MoE router loss is defined on plain rows"
    if not _accepts(core, "position_ids"):
        return "its forward takes no position_ids"
    return ""


def _static_packed_problem(core: Any) -> str:
    """Reasons known without running the model (empty string: none)."""
    problem = _static_varlen_problem(core)
    if problem:
        return problem
    config = core.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text, "layer_types", None) or [])
    if len(layer_types) > 1:
        return f"it mixes attention types {sorted(layer_types)} under one mask"
    return ""


def attention_implementation(model: Any) -> str:
    """The attention implementation transformers resolved for this model (`eager` if unset)."""
    core = _core_model(model)
    return str(getattr(core.config, "_attn_implementation", None) or "eager")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    import torch

    if a.shape != b.shape or not torch.isfinite(a).all():
        return False
    scale = float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * max(scale, 1.0)))


# ---------------------------------------------------------------------------------------------
# small model queries
# ---------------------------------------------------------------------------------------------


def _core_model(model: nn.Module) -> Any:
    """The transformers model under DDP/FSDP (`.module`), torch.compile (`._orig_mod`) and PEFT
    (`get_base_model`) wrappers."""
    core: Any = model
    while not hasattr(core, "config") and (hasattr(core, "module") or hasattr(core, "_orig_mod")):
        core = getattr(core, "module", None) or core._orig_mod
    if hasattr(core, "get_base_model"):
        core = core.get_base_model()
    return core


def _text_config(core: Any) -> Any:
    config = core.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _vocab_size(core: Any) -> int:
    head = core.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        # a ZeRO-3 parameter is an empty placeholder; its real shape is `ds_shape`
        return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
    return int(_text_config(core).vocab_size)


def _softcap(core: Any) -> float | None:
    cap = getattr(_text_config(core), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _sliding_window(core: Any) -> int | None:
    text = _text_config(core)
    window = getattr(text, "sliding_window", None)
    if not window or getattr(text, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text, "layer_types", None)
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return int(window)


def _router_loss_enabled(core: Any) -> bool:
    return bool(getattr(_text_config(core), "output_router_logits", False))


def _is_encoder_decoder(core: Any) -> bool:
    return bool(getattr(core.config, "is_encoder_decoder", False))


def _accepts(core: Any, name: str) -> bool:
    try:
        return name in inspect.signature(core.forward).parameters
    except (TypeError, ValueError):
        return False


def _compute_dtype(core: Any) -> torch.dtype:
    return core.get_input_embeddings().weight.dtype


def _device(core: Any) -> torch.device:
    return core.get_input_embeddings().weight.device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
