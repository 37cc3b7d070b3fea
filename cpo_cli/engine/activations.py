"""What the SwiGLU MLPs keep for the backward pass (`training.mlp_activation_saving`).

Without gradient checkpointing, a Llama-style layer keeps ~46 KB per token in fp32 on SmolLM2,
and its MLP `down(silu(gate(x)) * up(x))` holds more than half of it: the gate and up
projections, silu(gate) and the product, four `[tokens, intermediate]` tensors. Exact ways to
keep less, each one recipe value:

- `model`: the model's own MLP (keeps all four).
- `gate_up`: a fused SwiGLU + down projection keeps only gate and up and recomputes silu(gate)
  and the product in the backward (elementwise work, no extra matmul): Liger-Kernel's trick.
- `input`: selective activation checkpointing of the MLP: keeps only its input and runs the
  MLP again in the backward (one more MLP forward, ~1/3 of its FLOPs per step).

The MLP's own modules run (LoRA adapters, hooks and FSDP unsharding keep working) and parameter
names do not change: only each MLP instance's `forward` is replaced. An MLP is changed only
when it has `gate_proj`/`up_proj`/`down_proj` and an `act_fn` that computes SiLU, and the
replacement is checked once against the original on a random input.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Literal

from cpo_cli.errors import CpoError

if TYPE_CHECKING:
    import torch
    from torch import nn

MlpActivationSaving = Literal["model", "gate_up", "input"]


def apply_mlp_activation_saving(model: nn.Module, mode: str) -> int:
    """Replace the forward of every SwiGLU MLP in `model` per `mode`; the number changed."""
    if mode == "model":
        return 0
    if mode not in ("gate_up", "input"):
        raise ValueError(f"unknown mlp_activation_saving {mode!r}")
    changed = 0
    for module in model.modules():
        if not _is_swiglu_mlp(module):
            continue
        original = module.forward
        forward = _fused_forward if mode == "gate_up" else _checkpointed_forward
        module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
        if changed == 0:
            _check_same_output(module, original)
        changed += 1
    return changed


def _is_swiglu_mlp(module: nn.Module) -> bool:
    import torch

    parts = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, torch.nn.Module) for p in parts):
        return False
    act = getattr(module, "act_fn", None)
    if not isinstance(act, torch.nn.Module):
        return False
    probe = torch.linspace(-6, 6, 25)
    with torch.no_grad():
        return bool(torch.allclose(act(probe), torch.nn.functional.silu(probe), atol=1e-6))


def _check_same_output(module: nn.Module, original: Any) -> None:
    import torch

    gate_proj: Any = module.gate_proj
    weight: Any = gate_proj.weight
    if weight.numel() == 0 or weight.device.type == "meta":
        return  # partitioned (ZeRO-3) or not materialised: nothing to compare yet
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, int(weight.shape[1]), generator=g).to(weight.device, weight.dtype)
    x.requires_grad_(True)
    with torch.enable_grad():
        ours = module(x)
        (grad_ours,) = torch.autograd.grad(ours.float().sum(), x)
        theirs = original(x)
        (grad_theirs,) = torch.autograd.grad(theirs.float().sum(), x)
    tol = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 2e-2
    if not (
        torch.allclose(ours, theirs, rtol=tol, atol=tol)
        and torch.allclose(grad_ours, grad_theirs, rtol=tol, atol=tol)
    ):
        raise CpoError(
            f"training.mlp_activation_saving: the replaced MLP of {type(module).__name__} does "
            "not reproduce the model's own (its forward is not down(silu(gate(x)) * up(x)))",
            hint="set training.mlp_activation_saving=model for this model",
        )


def _checkpointed_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """`input`: keep only x; the MLP runs again in the backward."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if not (torch.is_grad_enabled() and self.training):
        return _swiglu(self, x)
    out: torch.Tensor = checkpoint(_swiglu, self, x, use_reentrant=False)
    return out


def _swiglu(self: Any, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return out


def _fused_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """`gate_up`: keep gate(x) and up(x); silu and the product are recomputed in backward."""
    import torch

    gate, up = self.gate_proj(x), self.up_proj(x)
    down = self.down_proj
    if not torch.is_grad_enabled() or not _plain_linear(down):
        # a LoRA / quantised / sharded down projection: checkpoint the part after gate and up
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            out: torch.Tensor = checkpoint(_act_down, self, gate, up, use_reentrant=False)
            return out
        return _act_down(self, gate, up)
    result: torch.Tensor = _SwiGLUDown.apply(gate, up, down.weight, down.bias)
    return result


def _act_down(self: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = self.down_proj(self.act_fn(gate) * up)
    return out


def _plain_linear(module: nn.Module) -> bool:
    import torch

    if type(module) is not torch.nn.Linear:
        return False
    weight = module.weight
    if hasattr(weight, "ds_id") or weight.numel() == 0:  # ZeRO-3 placeholder
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return True
    return not isinstance(weight, DTensor)


def _make_swiglu_down() -> Any:
    import torch
    import torch.nn.functional as F

    class SwiGLUDown(torch.autograd.Function):
        """down(silu(gate) * up) saving gate, up and the weight only."""

        @staticmethod
        def forward(  # type: ignore[override]
            ctx: Any,
            gate: torch.Tensor,
            up: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None,
        ) -> torch.Tensor:
            device_type = gate.device.type
            ctx.amp = (
                device_type,
                torch.is_autocast_enabled(device_type),
                torch.get_autocast_dtype(device_type),
            )
            product = F.silu(gate) * up
            ctx.save_for_backward(gate, up, weight, bias)
            return F.linear(product, weight, bias)

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
            gate, up, weight, bias = ctx.saved_tensors
            device_type, amp_enabled, amp_dtype = ctx.amp
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_enabled):
                sig = torch.sigmoid(gate)
                act = gate * sig  # silu(gate)
                product = act * up
                need_g, need_u, need_w, need_b = ctx.needs_input_grad
                grad_product = (
                    grad_out.matmul(weight.to(grad_out.dtype)) if need_g or need_u else None
                )
                grad_w = grad_b = None
                if need_w:
                    flat_g = grad_out.reshape(-1, grad_out.shape[-1])
                    flat_p = product.reshape(-1, product.shape[-1]).to(flat_g.dtype)
                    grad_w = flat_g.t().matmul(flat_p).to(weight.dtype)
                if need_b and bias is not None:
                    grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(bias.dtype)
            grad_gate = grad_up = None
            if grad_product is not None:
                grad_product = grad_product.to(gate.dtype)
                if need_u:
                    grad_up = grad_product * act
                if need_g:
                    # d silu(g)/dg = sig · (1 + g · (1 − sig))
                    grad_gate = grad_product * up * sig * (1 + gate * (1 - sig))
            return grad_gate, grad_up, grad_w, grad_b

    return SwiGLUDown


class _Lazy:
    """Builds the autograd function (and imports torch) on first use."""

    _fn: Any = None

    def apply(self, *args: Any) -> Any:
        if self._fn is None:
            type(self)._fn = _make_swiglu_down()
        return self._fn.apply(*args)


_SwiGLUDown = _Lazy()
