"""LM head + log-softmax at answer positions only, `chunk_size` positions at a time.

For a plain `nn.Linear` head a custom autograd function does the work: the forward keeps no
`[positions, V]` tensor, and the backward recomputes each chunk's logits and writes the
gradients of the hidden states, weight and bias directly (`∂log p(y)/∂z = onehot(y) −
softmax(z)`). With a single chunk the float32 logits are kept instead, so small batches pay no
recompute. Logit sums (for the `logits/*` metrics) come from h·ΣW + Σb, without a pass over V.
Other heads (LoRA on the head, quantised heads) and precomputed logits go through autograd,
with activation checkpointing per chunk when there are several chunks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def token_logps_and_logit_sums(
    source: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module | None,
    softcap: float | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: float32 log p(target) and the (detached) sum of its logits over the vocab.

    `source` is `[N, H]` hidden states with `head` the LM head, or `[N, V]` logits (`head`
    None). `softcap`: Gemma-style final logit soft-capping, cap·tanh(z/cap), applied to the
    head's output.
    """
    import torch

    if source.shape[0] == 0:
        empty = source.new_zeros(0, dtype=torch.float32)
        return empty, empty
    if head is not None and type(head) is torch.nn.Linear and _weights_are_local(head):
        logps, sums = _LinearHeadLogps.apply(
            source, head.weight, head.bias, targets, chunk_size, softcap
        )
        return logps, sums
    return _autograd_chunks(source, targets, head, softcap, chunk_size)


def _weights_are_local(head: nn.Module) -> bool:
    """True when the head's weight is a whole, ordinary tensor that can be used outside the
    head's own forward. Under DeepSpeed ZeRO-3 it is an empty placeholder (gathered only inside
    the module call), and a sharded FSDP2 DTensor is not the full matrix either: those heads
    are called as modules (`_autograd_chunks`), so the framework's hooks gather the weight."""
    import torch

    weight = head.weight
    if hasattr(weight, "ds_id") or weight.numel() == 0:  # ZeRO-3 partitioned parameter
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return True
    return isinstance(weight, torch.Tensor) and not isinstance(weight, DTensor)


def _autograd_chunks(
    source: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module | None,
    softcap: float | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    from torch.utils.checkpoint import checkpoint

    n = source.shape[0]
    # With several chunks, recompute each in backward rather than keep n × V floats alive.
    recompute = n > chunk_size and torch.is_grad_enabled() and source.requires_grad
    logps, sums = [], []
    for start in range(0, n, chunk_size):
        args = (source[start : start + chunk_size], targets[start : start + chunk_size])
        if recompute:
            lp, s = checkpoint(_chunk, *args, head, softcap, use_reentrant=False)
        else:
            lp, s = _chunk(*args, head, softcap)
        logps.append(lp)
        sums.append(s)
    return torch.cat(logps), torch.cat(sums)


def _chunk(
    source: torch.Tensor, targets: torch.Tensor, head: nn.Module | None, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    logits = _at_least_f32(head(source) if head is not None else source)
    if softcap is not None and head is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    return logp, logits.detach().sum(-1)


def _linear_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 logits of a chunk, and tanh(z/cap) when soft-capping (for the backward)."""
    import torch
    import torch.nn.functional as F

    z = _at_least_f32(F.linear(h, weight, bias))
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    """float32 for half types (the softmax needs it); float64 stays float64 (for gradcheck)."""
    import torch

    return x if x.dtype == torch.float64 else x.float()


def _make_linear_head_function() -> Any:
    import torch

    class LinearHeadLogps(torch.autograd.Function):
        @staticmethod
        def forward(  # type: ignore[override]
            ctx: Any,
            hidden: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None,
            targets: torch.Tensor,
            chunk_size: int,
            softcap: float | None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            n = hidden.shape[0]
            dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
            logps = torch.empty(n, dtype=dtype, device=hidden.device)
            sums = torch.empty_like(logps)
            if softcap is None:
                # Σ_v z_v = h·Σ_v W_v + Σ_v b_v: the logit sums without another pass over V
                # (in float64, as the sum of many logits of both signs cancels).
                w_sum = weight.double().sum(0)
                b_sum = bias.double().sum() if bias is not None else 0.0
                sums.copy_(hidden.double() @ w_sum + b_sum)
            kept = None
            lse = torch.empty_like(logps)  # log Σ exp z per position, for the backward's softmax
            for s in range(0, n, chunk_size):
                z, _ = _linear_logits(hidden[s : s + chunk_size], weight, bias, softcap)
                y = targets[s : s + chunk_size, None]
                z_y = z.gather(-1, y).squeeze(-1)
                logps[s : s + chunk_size] = z.log_softmax(-1).gather(-1, y).squeeze(-1)
                # logsumexp(z) = z_y − log p(y): the fused log-softmax is faster than logsumexp
                lse[s : s + chunk_size] = z_y - logps[s : s + chunk_size]
                if softcap is not None:
                    sums[s : s + chunk_size] = z.sum(-1)
                if n <= chunk_size and softcap is None:
                    kept = z  # one chunk: keep its logits, no recompute in backward
            ctx.save_for_backward(hidden, weight, bias, targets, kept, lse)
            ctx.chunk_size, ctx.softcap = chunk_size, softcap
            ctx.mark_non_differentiable(sums)
            return logps, sums

        @staticmethod
        def backward(  # type: ignore[override]
            ctx: Any, grad_logps: torch.Tensor, _grad_sums: torch.Tensor | None
        ) -> tuple[torch.Tensor | None, ...]:
            hidden, weight, bias, targets, kept, lse = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            grad_h = torch.empty_like(hidden) if need_h else None
            f32 = {"dtype": grad_logps.dtype, "device": weight.device}
            grad_w = torch.zeros(weight.shape, **f32) if need_w else None
            grad_b = torch.zeros(weight.shape[0], **f32) if need_b and bias is not None else None
            step = ctx.chunk_size
            for s in range(0, hidden.shape[0], step):
                h, y, g = hidden[s : s + step], targets[s : s + step], grad_logps[s : s + step]
                # ∂log softmax(z)_y/∂z = onehot(y) − softmax(z), times the incoming gradient;
                # softmax(z) = exp(z − lse) with the forward's lse (in place on fresh logits)
                if kept is not None:
                    t, probs = None, (kept - lse[s : s + step, None]).exp_()
                else:
                    z, t = _linear_logits(h, weight, bias, ctx.softcap)
                    probs = z.sub_(lse[s : s + step, None]).exp_()
                grad_z = probs.mul_(-g[:, None])
                grad_z.scatter_add_(-1, y[:, None], g[:, None])
                if t is not None:
                    grad_z.mul_(1 - t * t)  # d(cap·tanh(z/cap))/dz
                gz = grad_z.to(weight.dtype)
                if grad_h is not None:
                    grad_h[s : s + step] = gz @ weight
                if grad_w is not None:
                    grad_w.addmm_(gz.t().to(grad_w.dtype), h.to(grad_w.dtype))
                if grad_b is not None:
                    grad_b += grad_z.sum(0)
            return (
                grad_h,
                grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None,
                None,
                None,
                None,
            )

    return LinearHeadLogps


class _Lazy:
    """Defers building the autograd function (and importing torch) to its first use."""

    _fn: Any = None

    def apply(self, *args: Any) -> Any:
        if self._fn is None:
            type(self)._fn = _make_linear_head_function()
        return self._fn.apply(*args)


_LinearHeadLogps = _Lazy()
