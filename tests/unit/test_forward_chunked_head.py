"""The chunked LM-head log-probs: values and gradients against plain autograd and gradcheck."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cpo_cli.engine.chunked_head import token_logps_and_logit_sums  # noqa: E402


def reference(h, head, targets, softcap):  # type: ignore[no-untyped-def]
    z = head(h).double()
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1), z.sum(-1)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("chunk", [3, 100])  # several chunks (recompute) / one chunk (kept)
def test_gradcheck_linear_head(bias: bool, softcap: float | None, chunk: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 11, bias=bias).double()
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    params = [h, head.weight] + ([head.bias] if bias else [])

    logps, sums = token_logps_and_logit_sums(h, targets, head, softcap, chunk)
    ref_logps, ref_sums = reference(h, head, targets, softcap)
    torch.testing.assert_close(logps, ref_logps)
    torch.testing.assert_close(sums, ref_sums)
    assert not sums.requires_grad
    torch.autograd.gradcheck(
        lambda *xs: _apply(xs, head, targets, softcap, chunk, bias), tuple(params)
    )


def _apply(xs, head, targets, softcap, chunk, bias):  # type: ignore[no-untyped-def]
    """Call the function with explicit weight/bias tensors (gradcheck perturbs them)."""
    from cpo_cli.engine.chunked_head import _LinearHeadLogps

    b = xs[2] if bias else None
    return _LinearHeadLogps.apply(xs[0], xs[1], b, targets, chunk, softcap)[0]


def test_float32_gradients_match_autograd_with_tied_weight() -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight  # tied embeddings: both paths add into one gradient
    ids = torch.randint(0, 50, (9,))
    targets = torch.randint(0, 50, (9,))
    upstream = torch.linspace(-1, 2, 9)
    grads = []
    for use_ours in (True, False):
        emb.zero_grad()
        h = torch.tanh(emb(ids))
        if use_ours:
            logps = token_logps_and_logit_sums(h, targets, head, None, 4)[0]
        else:
            logps = head(h).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        (logps * upstream).sum().backward()
        grads.append(emb.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_other_heads_and_logits_take_the_autograd_path() -> None:
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(6, 13))  # not a plain Linear
    h = torch.randn(10, 6, requires_grad=True)
    targets = torch.randint(0, 13, (10,))
    logps, sums = token_logps_and_logit_sums(h, targets, head, None, 4)
    ref, ref_sums = reference(h, head, targets, None)
    torch.testing.assert_close(logps.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sums.double(), ref_sums, rtol=1e-5, atol=1e-6)
    logits = head(h)
    from_logits = token_logps_and_logit_sums(logits, targets, None, None, 4)[0]
    torch.testing.assert_close(from_logits, logps)
    assert token_logps_and_logit_sums(h[:0], targets[:0], head, None, 4)[0].shape == (0,)


def test_a_partitioned_head_weight_is_called_as_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DeepSpeed ZeRO-3 `lm_head.weight` is a placeholder outside the module's forward
    (marked by `ds_id`): the head must then be called as a module, never read directly."""
    from cpo_cli.engine import chunked_head

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 13, bias=False)
    head.weight.ds_id = 7  # what ZeRO-3 puts on a partitioned parameter
    calls = []

    def direct(*args: object) -> None:
        raise AssertionError("the weight was read outside the head's forward")

    monkeypatch.setattr(chunked_head._LinearHeadLogps, "apply", direct)
    head.register_forward_hook(lambda *a: calls.append(1))
    h = torch.randn(10, 6, requires_grad=True)
    targets = torch.randint(0, 13, (10,))
    logps, _ = token_logps_and_logit_sums(h, targets, head, None, 4)
    torch.testing.assert_close(logps.double(), reference(h, head, targets, None)[0])
    assert calls  # the module itself ran (so ZeRO-3's hooks would gather the weight)
    logps.sum().backward()
    assert h.grad is not None and head.weight.grad is not None


def test_mixed_precision_backward_recomputes_what_the_forward_computed() -> None:
    """Under autocast the head's logits are a bf16 matmul. The backward recomputes them and
    takes the softmax from the forward's log-sum-exp, so it must run under the same autocast
    state even when `.backward()` is called outside it (as training loops do)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 3000, bias=False)
    with torch.no_grad():
        head.weight.mul_(16)  # logits in the tens, where bf16 rounding is visible
    h = torch.randn(64, 64, requires_grad=True)
    targets = torch.randint(0, 3000, (64,))
    upstream = torch.randn(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = token_logps_and_logit_sums(h, targets, head, None, 16)
        ref = head(h).float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(logps, ref, rtol=1e-5, atol=1e-4)
    (ours,) = torch.autograd.grad((logps * upstream).sum(), h)
    (expected,) = torch.autograd.grad((ref * upstream).sum(), h)
    assert float((ours - expected).norm() / expected.norm()) < 2e-2
