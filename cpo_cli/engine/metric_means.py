"""Weighted running means of scalar metrics (by pairs; `nll_loss` by chosen tokens), summed on
the device: what the training loop logs every `logging_steps` and what evaluation reports."""

from __future__ import annotations

from typing import Any


class MetricMeans:
    """Running weighted sums of scalar metrics (weights per metric: pairs for most, chosen
    tokens for a token-weighted `nll_loss`).

    Tensor metrics are summed on their own device and read once, in `means()`: adding a
    micro-batch's metrics never waits for the device (no `.item()` per step on a GPU). Only
    scalars cross processes: one small tensor of sums is all-reduced when the means are read.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.weights: dict[str, Any] = {}

    def add(self, metrics: dict[str, Any], weight: float, *, keep: Any = None) -> None:
        """Add one batch's metrics with `weight` (e.g. its pair count). `keep`, a 0-dim bool
        tensor, drops the batch when False (`logging_nan_inf_filter`) without a host sync."""
        counted = weight if keep is None else _where(keep, float(weight))
        for key, value in metrics.items():
            term = _weighted(value, weight)
            if keep is not None:
                term = _where(keep, term)
            self.sums[key] = self.sums.get(key, 0.0) + term
            self.weights[key] = self.weights.get(key, 0.0) + counted

    def means(self, accelerator: Any = None) -> dict[str, float]:
        import torch

        keys = sorted(self.sums)
        entries = [self.sums[k] for k in keys] + [self.weights[k] for k in keys]
        if not entries:
            entries = [0.0]  # every process takes part in the reduction, even with no data
        device = accelerator.device if accelerator is not None else None
        device = device or next((e.device for e in entries if torch.is_tensor(e)), None)
        dtype = _sum_dtype(device)
        values = torch.stack(
            [torch.as_tensor(e, device=device).to(dtype).reshape(()) for e in entries]
        )
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, "sum")
        host = values.tolist()  # the one device-to-host copy
        n = len(keys)
        return {
            k: total / weight
            for k, total, weight in zip(keys, host[:n], host[n : 2 * n], strict=True)
            if weight != 0
        }

    def reset(self) -> None:
        self.sums.clear()
        self.weights.clear()


def _weighted(value: Any, weight: float) -> Any:
    """value × weight: a detached tensor in the sums' dtype, or a float."""
    import torch

    if torch.is_tensor(value):
        return value.detach().to(_sum_dtype(value.device)) * weight
    return float(value) * weight


def _where(keep: Any, term: Any) -> Any:
    """term where `keep`, else 0 (also when term is NaN/inf: 0 · NaN would stay NaN)."""
    import torch

    zero = torch.zeros((), device=keep.device)
    term = torch.as_tensor(term, device=keep.device)
    return torch.where(keep, term, zero.to(term.dtype))


def _sum_dtype(device: Any) -> Any:
    """float64 sums (as Python floats had), float32 where the device has no float64 (MPS)."""
    import torch

    return torch.float32 if device is not None and device.type == "mps" else torch.float64
