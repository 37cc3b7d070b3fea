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
        "4k": (2750, 1250),
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


#: random-init models shaped like released ones (no Hub): (config class name, fields)
SHAPED = {
    "smollm2-shape": (
        "LlamaConfig",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    ),
    "qwen05b-shape": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
    ),
}


def build_shaped_model(name: str, out_dir: Path, tokenizer_dir: Path) -> None:
    """A random-init model from a config shaped like a released model, with our tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cls_name, fields = SHAPED[name]
    cfg = getattr(transformers, cls_name)(
        **fields,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out_dir)
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
    kwargs = {"attn_implementation": a.trl_attn} if a.trl_attn else {}
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, **kwargs)
    train = load_dataset("json", data_files=a.data, split="train")
    args = CPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        learning_rate=a.lr,
        loss_type=a.loss_type,
        max_length=a.max_length,
        bf16=a.bf16,
        use_cpu=a.device == "cpu",
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
    return {"final_loss": float(losses[-1]) if losses else float("nan"), **_cuda_peak()}


def _cuda_peak() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def worker_cpo(a: argparse.Namespace) -> dict[str, float]:
    recipe = Path(a.out) / "bench_recipe.yaml"
    recipe.write_text(
        "model:\n"
        f"  name_or_path: {a.model}\n"
        "  dtype: float32\n" + (f"  attn_implementation: {a.attn}\n" if a.attn else "") + "data:\n"
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
        f"  use_cpu: {str(a.device == 'cpu').lower()}\n"
        f"  bf16: {str(a.bf16).lower()}\n"
        f"  mlp_activation_saving: {a.mlp_saving}\n"
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
    return {"final_loss": float(losses[-1]) if losses else float("nan"), **_cuda_peak()}


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
    cmd += ["--device", a.device, "--mlp-saving", a.mlp_saving]
    if a.bf16:
        cmd.append("--bf16")
    if a.attn:
        cmd += ["--attn", a.attn]
    if a.trl_attn:
        cmd += ["--trl-attn", a.trl_attn]
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
        f"largest batch of {a.max_batch_shape} pairs within {a.memory_gib:g} GiB "
        f"(2 steps; {allocator}; gradient checkpointing "
        f"{'on' if a.gradient_checkpointing else 'off'})"
    )
    print(
        f"{'model':<8} {'engine':<6} {'peak MiB per batch size':<40} {'MiB/pair':>9} {'max b':>6}"
    )
    for mname, mdir in models.items():
        data = work / f"{a.max_batch_shape}.jsonl"
        write_dataset(data, a.max_batch_shape, 2 * max(max(v) for v in sizes_for.values()))
        mem_key = "cuda_peak_mib" if a.device == "cuda" else "peak_rss_mib"
        best: dict[str, float] = {}
        for engine in a.engines:
            sizes, peaks = sizes_for[engine], []
            for b in sizes:
                a.batch_size = b
                peaks.append(run_once(engine, mdir, data, 2, a)[mem_key])
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
            write_dataset(data, a.max_batch_shape, 2 * b)
            peak = run_once("cpo", mdir, data, 2, a)[mem_key]
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
    p.add_argument(
        "--models",
        nargs="+",
        default=["tiny"],
        choices=["tiny", "smollm2", "smollm2-shape", "qwen05b-shape"],
    )
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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (both engines)")
    p.add_argument(
        "--attn", default=None, help="cpo's model.attn_implementation (sdpa, flex_attention, ...)"
    )
    p.add_argument("--trl-attn", default=None, help="TRL's attn_implementation")
    p.add_argument(
        "--mlp-saving",
        default="input",
        choices=["model", "gate_up", "input"],
        help="cpo's training.mlp_activation_saving",
    )
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds per measurement")
    p.add_argument("--tokenizer", default="smollm2", choices=["smollm2", "tiny"])
    p.add_argument(
        "--max-batch-shape",
        default="long",
        choices=["long", "4k"],
        help="pairs for --max-batch: ~1000 or ~4000 tokens per sequence",
    )
    a = p.parse_args()

    if a.worker:
        a.steps = a.worker_steps
        fn = worker_trl if a.worker == "trl" else worker_cpo
        print(json.dumps(fn(a)))
        return

    work = Path(tempfile.mkdtemp(prefix="cpo-bench-"))
    models = build_models(a.models, work, a.tokenizer)
    if a.max_batch:
        estimate_max_batch(models, work, a)
        return
    measure_speed(models, work, a)


def build_models(names: list[str], work: Path, tokenizer: str) -> dict[str, Path]:
    """Model folders by name: `tiny` (a 2-layer Qwen2 with the chosen tokenizer's vocabulary),
    `smollm2` (the shipped SmolLM2-135M-Instruct), `*-shape` (random-init, shaped like a
    released model). `tokenizer`: `smollm2` (shipped) or `tiny` (the test suite's)."""
    if tokenizer == "tiny":
        from cpo_cli.assets.build import build_tiny_tokenizer

        tok_dir = build_tiny_tokenizer(work / "tiny-tokenizer")
    else:
        from cpo_cli.assets.smollm2 import ensure_smollm2

        tok_dir = ensure_smollm2()
    models: dict[str, Path] = {}
    for name in names:
        if name == "tiny":
            models[name] = work / "tiny-qwen2"
            build_tiny_model(models[name], tok_dir)
        elif name == "smollm2":
            from cpo_cli.assets.smollm2 import ensure_smollm2

            models[name] = ensure_smollm2()
        else:
            models[name] = work / name
            build_shaped_model(name, models[name], tok_dir)
    return models


def step_model_flops(data: Path, model: Path, rows: int, batch_size: int) -> float:
    """Model FLOPs of one step (cpo_cli.engine.flops: the work the loss needs, 6·N per token
    and causal attention), averaged over the steps the data makes."""
    from transformers import AutoConfig, AutoTokenizer

    from cpo_cli.engine.flops import flops_model, pair_work

    tok = AutoTokenizer.from_pretrained(model)
    config = AutoConfig.from_pretrained(model)
    fm = flops_model(config, int(config.vocab_size))
    total = 0.0
    for line in data.read_text().splitlines():
        r = json.loads(line)
        p = len(tok(r["prompt"])["input_ids"])
        c, j = (len(tok(r[k])["input_ids"]) for k in ("chosen", "rejected"))
        total += fm.step_flops(pair_work(p, c, j))
    return total / (rows / batch_size)


def measure_speed(models: dict[str, Path], work: Path, a: argparse.Namespace) -> None:
    """Each (model, data): every engine's short and long run, `--repeats` rounds interleaved
    (cpo, trl, cpo, trl, ...), so both engines see the same machine load; the ratio of each
    round and their spread are printed."""
    import statistics

    from cpo_cli.engine.flops import peak_flops

    precision = "bf16" if a.bf16 else "fp32"
    peak = peak_flops(a.device, precision)
    short, long = a.steps
    rows_needed = a.batch_size * long
    print(
        f"machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; device {a.device}; "
        f"torch threads {a.threads}; batch {a.batch_size} pairs; {precision}; "
        f"cpo attention {a.attn or 'default'}; mlp_activation_saving {a.mlp_saving}"
    )
    print(
        f"steps timed: {long - short} (a {long}-step run minus a {short}-step run); "
        f"rounds: {a.repeats}; peak {'%.0f GFLOP/s' % (peak / 1e9) if peak else 'unknown'} "
        f"({precision}, run benchmarks/bench_mfu.py to measure it)\n"
    )
    memory = "CUDA MiB" if a.device == "cuda" else "peak MiB"
    header = (
        f"| model | data | engine | s/step | tok/s | {memory} | loss | GFLOP/s | MFU "
        "| speed × TRL (spread) | memory × TRL |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for mname, mdir in models.items():
        for shape in a.shapes:
            data = work / f"{shape}.jsonl"
            write_dataset(data, shape, rows_needed)
            tokens_per_step = count_tokens(data, mdir) / (rows_needed / a.batch_size)
            flops = step_model_flops(data, mdir, rows_needed, a.batch_size)
            rounds: list[dict[str, dict[str, float]]] = []
            for _ in range(a.repeats):
                res = {}
                for engine in a.engines:
                    r_short = run_once(engine, mdir, data, short, a)
                    r_long = run_once(engine, mdir, data, long, a)
                    mem_key = "cuda_peak_mib" if a.device == "cuda" else "peak_rss_mib"
                    res[engine] = {
                        "s": (r_long["wall"] - r_short["wall"]) / (long - short),
                        "peak": max(r_short.get(mem_key, 0.0), r_long.get(mem_key, 0.0)),
                        "loss": r_long["final_loss"],
                    }
                rounds.append(res)
            for engine in a.engines:
                s_step = statistics.median(r[engine]["s"] for r in rounds)
                peak_mib = max(r[engine]["peak"] for r in rounds)
                ratio = mem = ""
                if engine == "cpo" and "trl" in a.engines:
                    speeds = sorted(r["trl"]["s"] / r["cpo"]["s"] for r in rounds)
                    spread = f" ({speeds[0]:.2f}–{speeds[-1]:.2f})" if len(speeds) > 1 else ""
                    ratio = f"**{statistics.median(speeds):.2f}**{spread}"
                    mem_ratio = peak_mib / max(max(r["trl"]["peak"] for r in rounds), 1e-9)
                    mem = f"**{mem_ratio:.2f}**"
                mfu = f"{flops / s_step / peak:.0%}" if peak else "–"
                print(
                    f"| {mname} | {shape} | {engine} | {s_step:.2f} | "
                    f"{tokens_per_step / s_step:.0f} | {peak_mib:.0f} | "
                    f"{rounds[-1][engine]['loss']:.4f} | {flops / s_step / 1e9:.0f} | {mfu} | "
                    f"{ratio} | {mem} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
