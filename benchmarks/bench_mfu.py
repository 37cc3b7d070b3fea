"""How close to the roof: the machine's dense matmul peak, and where a cpo step's time goes.

1. Dense matmul peak (fp32 and bf16; best of several square products), written to
   `$CPO_CACHE/matmul_peak.json` (default `~/.cache/cpo/`) so that `cpo train` logs MFU.
2. One training step of cpo's engine (8 pairs, prompt-heavy or balanced) split into the LM head
   (chunked, forward + backward), the layers (the rest of forward + backward) and the optimizer
   step (fused AdamW), with the step's model FLOPs (`cpo_cli.engine.flops`), the achieved
   FLOP/s and MFU. Prints tables; asserts nothing.

    python benchmarks/bench_mfu.py                       # peak + tiny model
    python benchmarks/bench_mfu.py --models tiny smollm2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (prompt, chosen, rejected) tokens per pair
SHAPES = {"prompt-heavy": (400, 40, 40), "balanced": (120, 120, 120)}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype_name: str, size: int, repeats: int) -> float:
    """Best FLOP/s of `size`³ matrix products (2·size³ FLOPs each)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def write_peak(device: str, peaks: dict[str, float]) -> Path:
    from cpo_cli.engine.flops import PEAK_FILE

    root = os.environ.get("CPO_CACHE")
    path = (Path(root) if root else Path.home() / ".cache" / "cpo") / PEAK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[device] = peaks
    path.write_text(json.dumps(table, indent=2))
    return path


def build(model_name: str, device: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if model_name == "tiny":  # the bench_train.py tiny model: hidden 128, 2 layers, 49k vocab
        config = Qwen2Config(
            vocab_size=49152,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        model = Qwen2ForCausalLM(config)
    else:
        from cpo_cli.assets.smollm2 import ensure_smollm2

        model = AutoModelForCausalLM.from_pretrained(
            ensure_smollm2(), dtype=torch.float32, attn_implementation="sdpa"
        )
    return model.float().to(device).train()


def step_breakdown(model_name: str, shape: str, device: str, repeats: int, peak: float) -> dict:
    import torch

    from cpo_cli.data.collate import collate_pairs
    from cpo_cli.engine.activations import apply_mlp_activation_saving
    from cpo_cli.engine.chunked_head import token_logps_and_logit_sums
    from cpo_cli.engine.flops import flops_model, pair_work
    from cpo_cli.engine.forward import model_config, sequence_logps, vocab_size
    from cpo_cli.engine.layout_probe import choose_layout

    model = build(model_name, device)
    apply_mlp_activation_saving(model, "input")  # cpo's default
    g = torch.Generator().manual_seed(0)
    p, c, r = SHAPES[shape]
    vocab = vocab_size(model)
    rows = [
        {
            "prompt_input_ids": torch.randint(1, vocab, (p,), generator=g).tolist(),
            "chosen_input_ids": torch.randint(1, vocab, (c,), generator=g).tolist(),
            "rejected_input_ids": torch.randint(1, vocab, (r,), generator=g).tolist(),
        }
        for _ in range(8)
    ]
    layout = choose_layout(model)
    batch = {k: v.to(device) for k, v in collate_pairs(rows, pad_token_id=0, layout=layout).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    head = model.get_output_embeddings()
    totals, heads, optims = [], [], []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        out = sequence_logps(model, batch, chunk_size=256)
        out.logps.sum().backward()
        _sync(device)
        t1 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        # the head alone, on detached hidden states at the answer positions
        n = batch["target_ids"].numel()
        hidden = torch.randn(n, model.config.hidden_size, device=device, requires_grad=True)
        _sync(device)
        t3 = time.perf_counter()
        lp, _ = token_logps_and_logit_sums(hidden, batch["target_ids"], head, None, 256)
        lp.sum().backward()
        _sync(device)
        t4 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up (allocations, optimizer state)
            totals.append(t2 - t0)
            optims.append(t2 - t1)
            heads.append(t4 - t3)
    total, head_s, optim_s = (statistics.median(x) for x in (totals, heads, optims))
    fm = flops_model(model_config(model), vocab)
    flops = 8 * fm.step_flops(pair_work(p, c, r))
    return {
        "model": model_name,
        "shape": shape,
        "layout": layout,
        "s_step": total,
        "head": head_s / total,
        "optimizer": optim_s / total,
        "layers": max(0.0, 1 - (head_s + optim_s) / total),
        "model_gflop": flops / 1e9,
        "gflops": flops / total / 1e9,
        "mfu": flops / total / peak if peak else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="*", default=["tiny"], choices=["tiny", "smollm2"])
    p.add_argument("--shapes", nargs="+", default=["prompt-heavy", "balanced"])
    p.add_argument("--size", type=int, default=2048, help="matmul size for the peak")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    peaks = {d: matmul_peak(a.device, d, a.size, max(3, a.repeats)) for d in ("fp32", "bf16")}
    path = write_peak(a.device, peaks)
    print(f"dense matmul peak on {a.device} ({a.size}³, {a.threads} threads; cached in {path}):")
    native: dict[str, bool | None] = {"fp32": True}
    if a.device == "cpu":
        from cpo_cli.engine.distributed import cpu_half_precision_support

        native.update(cpu_half_precision_support())
    for dtype, value in peaks.items():
        slow = not native.get(dtype, True)
        note = f" (no native {dtype} matmul on this CPU: a fallback)" if slow else ""
        print(f"  {dtype}: {value / 1e9:.1f} GFLOP/s{note}")
    if not a.models:
        return
    print()
    header = (
        f"{'model':<8} {'data':<13} {'layout':<9} {'s/step':>7} {'head':>6} {'layers':>7} "
        f"{'optim':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'MFU':>6}"
    )
    print(header)
    print("-" * len(header))
    for model_name in a.models:
        for shape in a.shapes:
            r = step_breakdown(model_name, shape, a.device, a.repeats, peaks["fp32"])
            print(
                f"{r['model']:<8} {r['shape']:<13} {r['layout']:<9} {r['s_step']:7.2f} "
                f"{r['head']:6.0%} {r['layers']:7.0%} {r['optimizer']:6.0%} "
                f"{r['model_gflop']:7.0f} {r['gflops']:8.0f} {r['mfu']:6.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
