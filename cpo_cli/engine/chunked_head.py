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
    if head is not None and _is_plain_linear(head) and _weights_are_local(head):
        logps, sums = _LinearHeadLogps.apply(
            source, head.weight, head.bias, targets, chunk_size, softcap
        )
        return logps, sums
    return _autograd_chunks(source, targets, head, softcap, chunk_size)


def _is_plain_linear(head: nn.Module) -> bool:
    """An `nn.Linear` computing x·Wᵀ + b: the class itself, or FSDP2's `FSDPLinear` (a subclass
    that `fully_shard` creates and that keeps Linear's forward); not subclasses with another
    forward (quantised layers)."""
    import torch

    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def _weights_are_local(head: nn.Module) -> bool:
    """True when the head's weight is a whole, ordinary tensor that can be used outside the
    head's own forward. Under DeepSpeed ZeRO-3 it is an empty placeholder (gathered only inside
    the module call), and a sharded FSDP2 DTensor is not the full matrix either: those heads
    are called as modules (`_autograd_chunks`), so the framework's hooks gather the weight.

    Under FSDP2 as accelerate wraps a model, the head's unit (grouped with the final norm) is
    not resharded after the forward, so right after the model's forward its weight is the
    unsharded plain parameter: it is used directly, and its gradient joins FSDP2's
    reduce-scatter when the backward reaches the norm (checked against the unsharded model in
    tests/integration/test_fsdp2.py). Calling that grouped head a second time as a module
    crashes torch 2.13 (segfault in the second backward), so this path is also the safe one."""
    weight = head.weight
    if hasattr(weight, "ds_id") or weight.numel() == 0:  # ZeRO-3 partitioned parameter
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return True
    return not isinstance(weight, DTensor)


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
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 logits of a chunk, and tanh(z/cap) when soft-capping (for the backward).

    `scratch` (from `_scratch`) receives the logits when the weights are already float32/64:
    one buffer reused by every chunk, instead of a fresh `[chunk, V]` allocation per chunk
    (on a CPU each such allocation is a new mapping whose pages fault in again)."""
    import torch
    import torch.nn.functional as F

    if scratch is not None:
        out = scratch[: h.shape[0]]
        if bias is None:
            z = torch.mm(h, weight.t(), out=out)
        else:
            z = torch.addmm(bias, h, weight.t(), out=out)
    else:
        z = _at_least_f32(F.linear(h, weight, bias))
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _scratch(hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int) -> torch.Tensor | None:
    """A `[chunk, V]` logits buffer for `_linear_logits`, or None where the logits need a dtype
    conversion anyway (half-precision weights) or there is a single chunk."""
    import torch

    n = hidden.shape[0]
    if n <= chunk_size or weight.dtype not in (torch.float32, torch.float64):
        return None
    if torch.is_autocast_enabled(weight.device.type):
        return None  # `out=` would bypass autocast: keep the low-precision matmul it asks for
    if hidden.dtype != weight.dtype:
        return None
    return torch.empty(chunk_size, weight.shape[0], dtype=weight.dtype, device=weight.device)


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
            # the backward recomputes the logits: it must do so under the same autocast state,
            # or its softmax exp(z − lse) would not match the forward's lse
            device_type = hidden.device.type
            ctx.amp = (
                device_type,
                torch.is_autocast_enabled(device_type),
                torch.get_autocast_dtype(device_type),
            )
            dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
            logps = torch.empty(n, dtype=dtype, device=hidden.device)
            sums = torch.empty_like(logps)
            if softcap is None:
                # Σ_v z_v = h·Σ_v W_v + Σ_v b_v: the logit sums without another pass over V
                # (in float64, as the sum of many logits of both signs cancels).
                w_sum = weight.sum(0, dtype=torch.float64)  # no float64 copy of the weight
                b_sum = bias.sum(dtype=torch.float64) if bias is not None else 0.0
                sums.copy_(hidden.double() @ w_sum + b_sum)
            # one chunk: keep its logits, no recompute in backward
            keep = n <= chunk_size and softcap is None
            kept = None
            lse = torch.empty_like(logps)  # log Σ exp z per position, for the backward's softmax
            scratch = _scratch(hidden, weight, chunk_size)
            for s in range(0, n, chunk_size):
                z, _ = _linear_logits(hidden[s : s + chunk_size], weight, bias, softcap, scratch)
                y = targets[s : s + chunk_size, None]
                if softcap is not None:
                    sums[s : s + chunk_size] = z.sum(-1)
                z_y = z.gather(-1, y).squeeze(-1)
                lse[s : s + chunk_size] = _logsumexp(z, in_place=not keep)
                logps[s : s + chunk_size] = z_y - lse[s : s + chunk_size]
                if keep:
                    kept = z
            ctx.save_for_backward(hidden, weight, bias, targets, kept, lse)
            ctx.chunk_size, ctx.softcap = chunk_size, softcap
            ctx.mark_non_differentiable(sums)
            return logps, sums

        @staticmethod
        def backward(  # type: ignore[override]
            ctx: Any, grad_logps: torch.Tensor, _grad_sums: torch.Tensor | None
        ) -> tuple[torch.Tensor | None, ...]:
            device_type, amp_enabled, amp_dtype = ctx.amp
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_enabled):
                return _backward(ctx, grad_logps)

    def _backward(ctx: Any, grad_logps: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The gradients of hidden, weight and bias, one chunk of logits at a time."""
        hidden, weight, bias, targets, kept, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        f32 = {"dtype": grad_logps.dtype, "device": weight.device}
        grad_w = torch.zeros(weight.shape, **f32) if need_w else None
        grad_b = torch.zeros(weight.shape[0], **f32) if need_b and bias is not None else None
        step = ctx.chunk_size
        scratch = _scratch(hidden, weight, step)
        for s in range(0, hidden.shape[0], step):
            h, y, g = hidden[s : s + step], targets[s : s + step], grad_logps[s : s + step]
            # softmax(z) = exp(z − lse) with the forward's lse (in place on fresh logits)
            if kept is not None:
                t, probs = None, (kept - lse[s : s + step, None]).exp_()
            else:
                z, t = _linear_logits(h, weight, bias, ctx.softcap, scratch)
                probs = z.sub_(lse[s : s + step, None]).exp_()
            if t is None:
                # ∂log p(y)/∂z = onehot(y) − p: the one-hot part and the per-position
                # gradient g are applied to [chunk, H] operands, never to [chunk, V]
                _accumulate_grads(probs, h, y, g, weight, s, grad_h, grad_w, grad_b)
                continue
            grad_z = probs.mul_(-g[:, None])
            grad_z.scatter_add_(-1, y[:, None], g[:, None])
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


def _logsumexp(z: torch.Tensor, *, in_place: bool) -> torch.Tensor:
    """log Σ_v exp z_v per row; `in_place` overwrites z (no [chunk, V] temporary)."""
    import torch

    if not in_place:
        return torch.logsumexp(z, -1)
    top = z.amax(-1, keepdim=True)
    return z.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


def _accumulate_grads(
    probs: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    start: int,
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
) -> None:
    """One chunk's gradients for a head without soft-capping, with grad_z = g·(onehot(y) − p):
    grad_h = g·(W_y − p W), grad_W = Σ g·h into rows y − pᵀ(g·h), grad_b = Σ g at y − pᵀg."""
    g_col = g[:, None]
    if grad_h is not None:
        p_w = probs.to(weight.dtype) @ weight
        grad_h[start : start + h.shape[0]] = (weight[y] - p_w).mul_(g_col.to(weight.dtype))
    if grad_w is not None:
        gh = h.to(grad_w.dtype) * g_col.to(grad_w.dtype)
        grad_w.addmm_(probs.t().to(grad_w.dtype), gh, alpha=-1.0)
        grad_w.index_add_(0, y, gh)
    if grad_b is not None:
        grad_b.sub_(probs.t().to(grad_b.dtype) @ g.to(grad_b.dtype))
        grad_b.index_add_(0, y, g.to(grad_b.dtype))


class _Lazy:
    """Defers building the autograd function (and importing torch) to its first use."""

    _fn: Any = None

    def apply(self, *args: Any) -> Any:
        if self._fn is None:
            type(self)._fn = _make_linear_head_function()
        return self._fn.apply(*args)


_LinearHeadLogps = _Lazy()
