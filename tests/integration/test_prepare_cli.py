"""`cpo prepare` end to end through the real CLI on the shipped data and the tiny tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cpo_cli.assets import DEMO_DATA_DIR
from cpo_cli.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_prepare_with_a_tokenizer_writes_folder_manifest_and_json(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "prepared", tmp_path / "report.json"
    code, output = run(
        "prepare",
        "--dataset", str(DEMO_DATA_DIR / "demo_messy.jsonl"),
        "--output", str(out),
        "--tokenizer", str(tiny_model_dir),
        "--json", str(report),
        "max_length=64", "training.max_prompt_length=32",
    )  # fmt: skip
    assert code == 0, output
    assert "rows kept" in output and "prepared 3 pairs" in output
    data = json.loads(report.read_text())
    assert data["rows_in"] == 15 and data["rows_kept"] == 3 and data["rows_dropped"] == 12
    assert data["truncated"] == 1 and data["lengths"]["prompt"]["max"] == 32
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["settings"]["max_length"] == 64 and manifest["settings"]["max_prompt_length"] == 32
    )


def test_prepare_with_a_recipe_then_train_settings_must_match(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from support import make_training
    from transformers import AutoTokenizer

    from cpo_cli.data import load_prepared
    from cpo_cli.errors import DataError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\n"
        f"data:\n  train:\n    path: {DEMO_DATA_DIR / 'demo_train.jsonl'}\n"
        "training:\n  max_length: 256\n  max_prompt_length: 128\n"
    )
    out = tmp_path / "prepared"
    code, output = run(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_train_conversational.jsonl"),
        "--output", str(out), "--recipe", str(recipe), "--format", "conversational",
    )  # fmt: skip
    assert code == 0, output
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ok = load_prepared(out, tok, make_training(max_length=256, max_prompt_length=128))
    assert len(ok.dataset) == 300
    try:
        load_prepared(out, tok, make_training(max_length=512, max_prompt_length=128))
    except DataError as err:
        assert "max_length: prepared with 256, this run uses 512" in err.message
    else:
        raise AssertionError("a prepared folder with other lengths was accepted")


def test_scored_format_with_columns(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = run(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_scored.jsonl"),
        "--output", str(tmp_path / "p"), "--tokenizer", str(tiny_model_dir),
        "--columns", "prompt=source,candidates=translations", "--format", "scored",
    )  # fmt: skip
    assert code == 0, output
    assert "tied_scores: 4" in output and "prepared 34 pairs" in output


def run_process(*args: str) -> tuple[int, str]:
    """The CLI in a child process, to see exactly what a user sees on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "cpo_cli", *args], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_errors_are_one_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = run_process(
        "prepare", "--dataset", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "p"),
        "--tokenizer", str(tiny_model_dir),
    )  # fmt: skip
    assert code == 1 and "dataset file not found" in output and "Traceback" not in output
    code, output = run_process(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_messy.jsonl"),
        "--output", str(tmp_path / "p"), "--tokenizer", str(tiny_model_dir), "--strict",
    )  # fmt: skip
    assert code == 1 and "--strict" in output and not (tmp_path / "p").exists()
    code, output = run_process("prepare", "--dataset", "x.jsonl", "--output", str(tmp_path / "p"))
    assert code == 1 and "exactly one of --recipe and --tokenizer" in output


def test_cpo_train_reads_the_prepared_folder_and_refuses_other_lengths(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\n"
        f"data:\n  train:\n    path: {tmp_path / 'prepared'}\n"
        f"training:\n  output_dir: {tmp_path / 'out'}\n  max_steps: 1\n"
        "  per_device_train_batch_size: 4\n  max_length: 128\n  max_prompt_length: 64\n"
        "  save_strategy: 'no'\n  report_to: none\n"
    )
    code, output = run_process(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_train.jsonl"),
        "--output", str(tmp_path / "prepared"), "--recipe", str(recipe),
    )  # fmt: skip
    assert code == 0, output
    code, output = run_process("train", str(recipe))
    assert code == 0, output
    assert "300 pairs" in output and (tmp_path / "out" / "model.safetensors").is_file()
    code, output = run_process("train", str(recipe), "training.max_length=256")
    assert code == 1
    assert "max_length: prepared with 128, this run uses 256" in output
