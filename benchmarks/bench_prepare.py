"""Rows/s of `cpo`'s data preparation against TRL 1.16's own CPO dataset processing.

Same data (the shipped demo pairs replicated to `--rows`), same tokenizer, one process each.
TRL's side runs exactly what `CPOTrainer.__init__` runs on a dataset — `maybe_extract_prompt`,
`maybe_apply_chat_template`, then `tokenize_row`, each a `Dataset.map` — calling its methods
on a stand-in `self` so no model is needed. Ours is `prepare_dataset` from the file (reading,
checking, template, tokenising, building the Dataset), which does strictly more work.

    python benchmarks/bench_prepare.py [--rows 5000] [--tokenizer DIR] [--repeats 3] [--num-proc N]

`--huge-row-mb N` instead measures memory: the peak resident size of a child process preparing
`--rows` ordinary pairs plus one pair whose prompt is N MB of text (a runaway scrape), under the
default byte cap (the row is dropped before tokenising) and, for comparison, without it.

Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from cpo_cli.assets import DEMO_DATA_DIR


def replicate(name: str, rows: int, out: Path) -> list[dict[str, Any]]:
    base = [json.loads(line) for line in (DEMO_DATA_DIR / name).read_text().splitlines()]
    data = [base[i % len(base)] for i in range(rows)]
    out.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return data


def run_ours(path: Path, tokenizer: Any, num_proc: int | None) -> int:
    from cpo_cli.data import prepare_dataset
    from cpo_cli.recipe import TrainingConfig

    training = TrainingConfig(dataset_num_proc=num_proc, is_encoder_decoder=False)
    return len(prepare_dataset(path, tokenizer, training).dataset)


def run_trl(rows: list[dict[str, Any]], tokenizer: Any, num_proc: int | None) -> int:
    import datasets
    from accelerate import PartialState
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    PartialState()
    fake = SimpleNamespace(processing_class=tokenizer, is_encoder_decoder=False, max_length=1024)
    fake.build_tokenized_answer = functools.partial(CPOTrainer.build_tokenized_answer, fake)
    tokenize_row = functools.partial(CPOTrainer.tokenize_row, fake)
    ds = datasets.Dataset.from_list(rows)
    ds = ds.map(maybe_extract_prompt, num_proc=num_proc)
    ds = ds.map(
        maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer}, num_proc=num_proc
    )
    ds = ds.map(tokenize_row, num_proc=num_proc)
    return len(ds)


def best_of(repeats: int, fn: Any, *args: Any) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), n


def _child_prepare(path: str, tok_dir: str, max_row_bytes: str) -> None:
    """Run in a child process: prepare `path`, print rows kept and dropped."""
    from transformers import AutoTokenizer

    from cpo_cli.data import prepare_dataset
    from cpo_cli.recipe import DataSource, TrainingConfig

    source = DataSource(path=path, max_row_bytes=int(max_row_bytes))
    report = prepare_dataset(
        source, AutoTokenizer.from_pretrained(tok_dir), TrainingConfig(is_encoder_decoder=False)
    ).report
    print(json.dumps({"kept": report.rows_kept, "dropped": report.dropped}))


def _peak_rss_mb(args: list[str]) -> tuple[float, str]:
    """Peak resident size (MB) of one child process (its own, from wait4), and its last line."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", *args], stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines() or [""]
    outcome = lines[-1] if proc.returncode == 0 else f"exit {proc.returncode}: {lines[-1][:200]}"
    return usage.ru_maxrss / 1024, outcome


def huge_row(tmp_dir: Path, tok_dir: Path, rows: int, megabytes: int, uncapped_mb: int) -> None:
    """Peak RSS of preparing `rows` pairs, alone and with one `megabytes` MB prompt under the
    default byte cap; then with an `uncapped_mb` MB prompt and no cap (what tokenising a long
    row costs)."""
    from cpo_cli.recipe import DataSource

    default_cap = DataSource(path="x").max_row_bytes
    runs = (("baseline", 0, default_cap), ("default cap", megabytes, default_cap),
            ("no cap", uncapped_mb, 2**62))  # fmt: skip
    print(f"{rows} ordinary pairs; default max_row_bytes {default_cap:,}")
    for label, mb, cap in runs:
        path = tmp_dir / f"huge-{mb}.jsonl"
        replicate("demo_train.jsonl", rows, path)
        if mb:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"prompt": "word " * (mb * 2**20 // 5), "chosen": "a",
                                    "rejected": "b"}) + "\n")  # fmt: skip
        peak, outcome = _peak_rss_mb([str(path), str(tok_dir), str(cap)])
        size = path.stat().st_size / 2**20
        print(f"  {label:<12} +{mb:>4} MB row ({size:,.0f} MB file): peak RSS {peak:,.0f} MB")
        print(f"  {'':<12} {outcome}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_prepare(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--huge-row-mb", type=int, default=None, help="measure memory instead")
    parser.add_argument("--uncapped-mb", type=int, default=4, help="with --huge-row-mb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, default=None, help="dataset_num_proc, both sides")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the tiny test tokenizer)")
    args = parser.parse_args()

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        if args.tokenizer:
            tok_dir = Path(args.tokenizer)
        else:
            from cpo_cli.assets.build import build_tiny_tokenizer

            tok_dir = build_tiny_tokenizer(tmp_dir / "tokenizer")
        if args.huge_row_mb is not None:
            huge_row(tmp_dir, tok_dir, args.rows, args.huge_row_mb, args.uncapped_mb)
            return
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        print(f"tokenizer: {tok_dir} ({len(tokenizer)} tokens); rows: {args.rows}; "
              f"best of {args.repeats}; num_proc {args.num_proc}")  # fmt: skip
        print(f"{'data':<16}{'cpo rows/s':>12}{'TRL rows/s':>12}{'ratio':>8}")
        for label, name in (("standard", "demo_train.jsonl"),
                            ("conversational", "demo_train_conversational.jsonl")):  # fmt: skip
            path = tmp_dir / f"{label}.jsonl"
            rows = replicate(name, args.rows, path)
            ours_s, ours_n = best_of(args.repeats, run_ours, path, tokenizer, args.num_proc)
            trl_s, trl_n = best_of(args.repeats, run_trl, rows, tokenizer, args.num_proc)
            assert ours_n == trl_n == args.rows, (ours_n, trl_n)
            ours_rate, trl_rate = ours_n / ours_s, trl_n / trl_s
            print(f"{label:<16}{ours_rate:>12,.0f}{trl_rate:>12,.0f}{ours_rate / trl_rate:>7.1f}x")


if __name__ == "__main__":
    main()
