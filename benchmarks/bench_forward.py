"""One CPO forward + backward three ways: TRL-style full logits, chunked LM head, prefix sharing.

Same model (default: a tiny random Qwen2, vocab 32k; or `--model smollm2`), same 8 pairs,
fp32. Each variant runs in its own process so its peak resident memory is its own; the figure
is the peak RSS growth over the process's state just before the first step (model and batch
already built). Time is the median
of `--repeats` steps after one warm-up (wall clock, and process CPU time, which is steadier
on a shared machine). Prints a table; asserts nothing.

    python benchmarks/bench_forward.py
    python benchmarks/bench_forward.py --hidden 64 --repeats 5 --shapes balanced
    python benchmarks/bench_forward.py --model smollm2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("full-logits", "chunked-pair-rows", "packed")
#: (prompt, chosen, rejected) token counts per pair; each row stays <= 512 tokens
SHAPES = {"prompt-heavy": (400, 50, 60), "balanced": (170, 150, 170)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_model(model: str, hidden: int, vocab: int):  # type: ignore[no-untyped-def]
    """`tiny`: a random 2-layer Qwen2; `smollm2`: SmolLM2-135M-Instruct (cached conversion);
    anything else: a local model folder."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if model == "tiny":
        config = Qwen2Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        return Qwen2ForCausalLM(config).float()
    if model == "smollm2":
        from cpo_cli.assets.smollm2 import ensure_smollm2

        model = str(ensure_smollm2())
    return AutoModelForCausalLM.from_pretrained(
        model, dtype=torch.float32, attn_implementation="sdpa"
    )


def run_variant(
    variant: str, shape: str, model_name: str, hidden: int, vocab: int, repeats: int
) -> dict:
    import torch

    from cpo_cli.data.collate import collate_pairs
    from cpo_cli.engine.forward import sequence_logps
    from cpo_cli.losses.sigmoid import sigmoid_loss

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = build_model(model_name, hidden, vocab)
    model.train()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(1)
    p_len, c_len, r_len = SHAPES[shape]
    rows = [
        {
            "prompt_input_ids": torch.randint(1, vocab, (p_len - i,), generator=g).tolist(),
            "chosen_input_ids": torch.randint(1, vocab, (c_len + 3 * i,), generator=g).tolist(),
            "rejected_input_ids": torch.randint(1, vocab, (r_len - 2 * i,), generator=g).tolist(),
        }
        for i in range(8)
    ]
    layout = "packed" if variant == "packed" else "pair_rows"
    batch = collate_pairs(rows, pad_token_id=0, layout=layout)

    def full_logits_logps() -> torch.Tensor:
        """TRL's get_batch_logps: [2B, T, V] logits, log-softmax everywhere, mask the prompt."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = torch.full_like(batch["input_ids"], -100)
        labels[batch["target_rows"], batch["target_cols"] + 1] = batch["target_ids"]
        labels, logits = labels[:, 1:], logits[:, :-1].float()
        mask = labels != -100
        per_token = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return (per_token * mask).sum(-1)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if variant == "full-logits":
            logps = full_logits_logps()
        else:
            logps = sequence_logps(model, batch, chunk_size=1024).logps
        loss = sigmoid_loss(logps[:8], logps[8:], beta=0.1).mean() - 0.01 * logps[:8].mean()
        loss.backward()
        return float(loss.detach())

    base = _rss_mb()
    times, cpu_times, losses = [], [], []
    for i in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        if i:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "variant": variant,
        "shape": shape,
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "peak_mb": _peak_rss_mb() - base,
        "loss": losses[-1],
        "rows": int(batch["input_ids"].shape[0]),
        "width": int(batch["input_ids"].shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2 | a local model folder")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_variant(
            args.one[0], args.one[1], args.model, args.hidden, args.vocab, args.repeats
        )
        print(json.dumps(result))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if args.model == "tiny":
        print(f"tiny Qwen2: vocab {args.vocab}, hidden {args.hidden}, 2 layers, 8 pairs, fp32")
    else:
        print(f"{args.model}: 8 pairs, fp32")
    header = f"{'shape':<13} {'variant':<18} {'rows x width':>12} {'s/step':>7} {'cpu-s':>6}"
    print(header + f" {'peak MB':>8} {'speed-up':>8} {'memory':>7} {'loss':>11}")
    for shape in args.shapes:
        results = []
        for variant in args.variants:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                variant,
                shape,
                "--model",
                args.model,
                "--hidden",
                str(args.hidden),
                "--vocab",
                str(args.vocab),
                "--repeats",
                str(args.repeats),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        ref = results[0]
        for r in results:
            print(
                f"{shape:<13} {r['variant']:<18} {r['rows']:>5} x {r['width']:<4} "
                f"{r['seconds']:>7.2f} {r['cpu_seconds']:>6.2f} {r['peak_mb']:>8.0f} "
                f"{ref['seconds'] / r['seconds']:>7.2f}x "
                f"{r['peak_mb'] / max(ref['peak_mb'], 1):>6.2f}x {r['loss']:>11.6f}"
            )


if __name__ == "__main__":
    main()
