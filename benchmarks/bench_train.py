"""Training speed and memory: cpo's engine against TRL's CPOTrainer, measured in one run.

Each measurement runs in its own process (so peak resident memory is that run's alone) on the
same model folder, data and settings. Start-up (imports, model load, data preparation) is
cancelled out by timing a short and a long run and taking the difference, so the figure is the
time of `long - short` optimizer steps. Prints a table; it asserts nothing (targets are read off
the table and reported, never checked by a timed test).

    python benchmarks/bench_train.py                      # tiny model, both data shapes
    python benchmarks/bench_train.py --models tiny smollm2 --steps 2 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_COLOR": "1",
}

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "question",
    "city",
    "river",
    "number",
    "translate",
    "sentence",
    "correct",
    "wrong",
    "because",
    "small",
    "large",
    "first",
    "second",
    "red",
    "blue",
    "green",
    "north",
    "south",
    "water",
    "light",
    "sound",
    "paper",
    "stone",
    "garden",
    "window",
    "market",
    "teacher",
    "student",
    "summer",
    "winter",
    "morning",
    "evening",
    "quickly",
    "slowly",
]


# ---------------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------------


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_dataset(path: Path, shape: str, rows: int, seed: int = 0) -> None:
    """Synthetic pairs (about one token a word). prompt-heavy: ~400-token prompts, ~40-token
    answers; balanced: ~120/120; long: ~1000 tokens per sequence (prompt 690, answers 300)."""
    rng = random.Random(seed)
    prompt_words, answer_words = {
        "prompt-heavy": (380, 35),
        "balanced": (110, 110),
        "long": (690, 300),
    }[shape]
    with path.open("w") as f:
        for _ in range(rows):
            row = {
                "prompt": _text(rng, prompt_words) + "\n",
                "chosen": _text(rng, answer_words),
                "rejected": _text(rng, answer_words),
            }
            f.write(json.dumps(row) + "\n")


def build_tiny_model(out_dir: Path, tokenizer_dir: Path) -> None:
    """A random-init Qwen2 with a real 49k vocabulary: the LM head dominates, as in the brief."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# workers (each runs in a fresh process)
# ---------------------------------------------------------------------------------------------


def worker_trl(a: argparse.Namespace) -> dict[str, float]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    train = load_dataset("json", data_files=a.data, split="train")
    args = CPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        learning_rate=a.lr,
        loss_type=a.loss_type,
        max_length=a.max_length,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=42,
        gradient_checkpointing=a.gradient_checkpointing,
    )
    trainer = CPOTrainer(model=model, args=args, processing_class=tok, train_dataset=train)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"final_loss": float(losses[-1]) if losses else float("nan")}


def worker_cpo(a: argparse.Namespace) -> dict[str, float]:
    recipe = Path(a.out) / "bench_recipe.yaml"
    recipe.write_text(
        "model:\n"
        f"  name_or_path: {a.model}\n"
        "  dtype: float32\n"
        "data:\n"
        "  train:\n"
        f"    path: {a.data}\n"
        "training:\n"
        f"  output_dir: {a.out}/run\n"
        f"  per_device_train_batch_size: {a.batch_size}\n"
        f"  max_steps: {a.steps}\n"
        f"  learning_rate: {a.lr}\n"
        f"  loss_type: {a.loss_type}\n"
        f"  max_length: {a.max_length}\n"
        f"  max_prompt_length: {a.max_length - 1}\n"
        "  use_cpu: true\n"
        "  bf16: false\n"
        "  save_strategy: 'no'\n"
        "  logging_steps: 1\n"
        "  disable_tqdm: true\n"
        f"  gradient_checkpointing: {str(a.gradient_checkpointing).lower()}\n"
        f"  prefix_sharing: {str(not a.no_prefix_sharing).lower()}\n"
        + (f"  logprob_chunk_size: {a.chunk_size}\n" if a.chunk_size else "")
    )
    import torch

    torch.set_num_threads(a.threads)
    from cpo_cli.cli import app

    try:
        app(["--quiet", "train", str(recipe)], standalone_mode=False)
    except SystemExit as e:  # typer may exit 0 on success
        if e.code not in (0, None):
            raise
    losses = []
    metrics = Path(a.out) / "run" / "metrics.jsonl"
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses.append(rec["loss"])
    return {"final_loss": float(losses[-1]) if losses else float("nan")}


# ---------------------------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------------------------


def run_once(engine: str, model: Path, data: Path, steps: int, a: argparse.Namespace) -> dict:
    """One training run in a child process: wall seconds, peak RSS (MiB), final loss."""
    out = tempfile.mkdtemp(prefix=f"bench-{engine}-")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--model",
        str(model),
        "--data",
        str(data),
        "--worker-steps",
        str(steps),
        "--out",
        out,
        "--batch-size",
        str(a.batch_size),
        "--max-length",
        str(a.max_length),
        "--loss-type",
        a.loss_type,
        "--threads",
        str(a.threads),
    ]
    if a.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if a.no_prefix_sharing:
        cmd.append("--no-prefix-sharing")
    if a.chunk_size:
        cmd += ["--chunk-size", str(a.chunk_size)]
    env = dict(ENV)
    if getattr(a, "mmap_threshold_kib", 0):
        # Tensors above the threshold get their own mapping, returned to the OS when freed:
        # peak RSS then follows the live tensors rather than the heap's fragmentation.
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold_kib * 1024)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{engine} run failed:\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(wall=wall, peak_rss_mib=rusage.ru_maxrss / 1024)
    return result


def count_tokens(data: Path, model: Path) -> int:
    """Tokens in one row `prompt + chosen` and `prompt + rejected`, summed over rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    total = 0
    for line in data.read_text().splitlines():
        r = json.loads(line)
        p = len(tok(r["prompt"])["input_ids"])
        total += 2 * p + len(tok(r["chosen"])["input_ids"]) + len(tok(r["rejected"])["input_ids"])
    return total


def estimate_max_batch(models: dict[str, Path], work: Path, a: argparse.Namespace) -> None:
    """Peak RSS of two optimizer steps (the second backward runs with the optimizer state
    allocated) at several batch sizes; the least-squares per-pair slope, extrapolated to the
    memory budget, gives the largest batch that fits (both engines measured the same way, in the
    same run). Batch sizes should be large enough that the backward, not the model load or the
    optimizer step, sets the peak: otherwise the slope is flat."""
    sizes_for = {"cpo": sorted(set(a.max_batch_sizes)), "trl": sorted(set(a.max_batch_sizes_trl))}
    if any(len(sizes_for[e]) < 2 for e in a.engines):
        raise SystemExit("--max-batch-sizes(-trl) need at least two different batch sizes")
    if a.mmap_threshold_kib is None:
        a.mmap_threshold_kib = 1024
    budget = a.memory_gib * 1024
    allocator = (
        f"glibc mmap threshold fixed at {a.mmap_threshold_kib} KiB"
        if a.mmap_threshold_kib
        else "glibc default allocator"
    )
    print(
        f"largest batch of ~1024-token pairs within {a.memory_gib:g} GiB "
        f"(2 steps; {allocator}; gradient checkpointing "
        f"{'on' if a.gradient_checkpointing else 'off'})"
    )
    print(
        f"{'model':<8} {'engine':<6} {'peak MiB per batch size':<40} {'MiB/pair':>9} {'max b':>6}"
    )
    for mname, mdir in models.items():
        data = work / "long.jsonl"
        write_dataset(data, "long", 2 * max(max(v) for v in sizes_for.values()))
        best: dict[str, float] = {}
        for engine in a.engines:
            sizes, peaks = sizes_for[engine], []
            for b in sizes:
                a.batch_size = b
                peaks.append(run_once(engine, mdir, data, 2, a)["peak_rss_mib"])
            slope, base = _line_fit(sizes, peaks)
            best[engine] = (budget - base) / max(slope, 1e-6)
            shown = " ".join(f"{b}:{m:.0f}" for b, m in zip(sizes, peaks, strict=True))
            print(
                f"{mname:<8} {engine:<6} {shown:<40} {slope:9.0f} {best[engine]:6.0f}", flush=True
            )
        if "cpo" in best and "trl" in best:
            print(f"{mname:<8} cpo/trl largest-batch ratio: {best['cpo'] / best['trl']:.1f}x")
        for b in a.check_batch:
            # a real run at the size claimed to fit, not an extrapolation
            a.batch_size = b
            write_dataset(data, "long", 2 * b)
            peak = run_once("cpo", mdir, data, 2, a)["peak_rss_mib"]
            verdict = "fits" if peak <= budget else "does NOT fit"
            print(f"{mname:<8} cpo    b={b}: peak {peak:.0f} MiB, {verdict} in {budget:.0f} MiB")


def _line_fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return slope, my - slope * mx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", choices=["trl", "cpo"])
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--models", nargs="+", default=["tiny"], choices=["tiny", "smollm2"])
    p.add_argument("--shapes", nargs="+", default=["prompt-heavy", "balanced"])
    p.add_argument("--worker-steps", type=int, default=0)
    p.add_argument("--steps", nargs=2, type=int, default=[2, 6], metavar=("SHORT", "LONG"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--loss-type", default="sigmoid")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-prefix-sharing", action="store_true")
    p.add_argument("--chunk-size", type=int, default=0, help="cpo's logprob_chunk_size")
    p.add_argument(
        "--engines",
        nargs="*",
        default=["cpo", "trl"],
        help="engines to measure (--max-batch with none: only the --check-batch runs)",
    )
    p.add_argument(
        "--max-batch",
        action="store_true",
        help="estimate the largest batch of ~1024-token pairs that fits in --memory-gib: one step\n"
        "at two batch sizes, peak RSS extrapolated linearly (an estimate, not a crash test)",
    )
    p.add_argument("--max-batch-sizes", nargs="+", type=int, default=[4, 8, 16], help="cpo's")
    p.add_argument("--max-batch-sizes-trl", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument(
        "--check-batch",
        nargs="*",
        type=int,
        default=[],
        help="after the estimate, run cpo for real at these batch sizes and report the peak",
    )
    p.add_argument(
        "--mmap-threshold-kib",
        type=int,
        default=None,
        help="fix glibc's mmap threshold for the workers (default: 1024 with --max-batch, else\n"
        "glibc's own dynamic threshold, which keeps freed tensors in the heap, so that peak\n"
        "RSS follows its fragmentation; 0 forces glibc's default)",
    )
    p.add_argument("--memory-gib", type=float, default=24.0)
    a = p.parse_args()

    if a.worker:
        a.steps = a.worker_steps
        fn = worker_trl if a.worker == "trl" else worker_cpo
        print(json.dumps(fn(a)))
        return

    from cpo_cli.assets.smollm2 import ensure_smollm2

    work = Path(tempfile.mkdtemp(prefix="cpo-bench-"))
    smol = ensure_smollm2()
    models = {}
    if "tiny" in a.models:
        models["tiny"] = work / "tiny-qwen2"
        build_tiny_model(models["tiny"], smol)
    if "smollm2" in a.models:
        models["smollm2"] = smol

    if a.max_batch:
        estimate_max_batch(models, work, a)
        return

    short, long = a.steps
    rows_needed = a.batch_size * long
    print(
        f"machine: {os.cpu_count()} cores; torch threads {a.threads}; batch {a.batch_size} pairs;"
    )
    print(f"steps timed: {long - short} (a {long}-step run minus a {short}-step run)\n")
    header = (
        f"{'model':<8} {'data':<13} {'engine':<6} {'s/step':>8} {'tok/s':>9} "
        f"{'peak MiB':>9} {'loss':>9} | {'speed x':>7} {'mem x':>6}"
    )
    print(header)
    print("-" * len(header))
    for mname, mdir in models.items():
        for shape in a.shapes:
            data = work / f"{shape}.jsonl"
            write_dataset(data, shape, rows_needed)
            tokens_per_step = count_tokens(data, mdir) / (rows_needed / a.batch_size)
            res = {}
            for engine in a.engines:
                r_short = run_once(engine, mdir, data, short, a)
                r_long = run_once(engine, mdir, data, long, a)
                per_step = (r_long["wall"] - r_short["wall"]) / (long - short)
                res[engine] = {
                    "s_per_step": per_step,
                    "tok_s": tokens_per_step / per_step,
                    "peak": max(r_short["peak_rss_mib"], r_long["peak_rss_mib"]),
                    "loss": r_long["final_loss"],
                }
            for engine, r in res.items():
                ratio = ""
                if engine == "cpo" and "trl" in res:
                    speed = res["trl"]["s_per_step"] / r["s_per_step"]
                    mem = r["peak"] / res["trl"]["peak"]
                    ratio = f"{speed:7.2f} {mem:6.2f}"
                print(
                    f"{mname:<8} {shape:<13} {engine:<6} {r['s_per_step']:8.2f} {r['tok_s']:9.0f} "
                    f"{r['peak']:9.0f} {r['loss']:9.4f} | {ratio}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
