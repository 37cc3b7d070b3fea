"""`cpo prepare` end to end through the real CLI on the shipped data and the tiny tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support import Result, cpo_process, write_recipe

from cpo_cli.assets import DEMO_DATA_DIR

Cli = Callable[..., Result]


def test_prepare_with_a_tokenizer_writes_folder_manifest_and_json(
    cli: Cli, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "prepared", tmp_path / "report.json"
    done = cli(
        "prepare",
        "--dataset", str(DEMO_DATA_DIR / "demo_messy.jsonl"),
        "--output", str(out),
        "--tokenizer", str(tiny_model_dir),
        "--json", str(report),
        "max_length=64", "training.max_prompt_length=32",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "rows kept" in done.output and "prepared 3 pairs" in done.output
    data = json.loads(report.read_text())
    assert data["rows_in"] == 15 and data["rows_kept"] == 3 and data["rows_dropped"] == 12
    assert data["truncated"] == 1 and data["lengths"]["prompt"]["max"] == 32
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["settings"]["max_length"] == 64 and manifest["settings"]["max_prompt_length"] == 32
    )


def test_prepare_with_a_recipe_then_train_settings_must_match(
    cli: Cli, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from support import make_training
    from transformers import AutoTokenizer

    from cpo_cli.data import load_prepared
    from cpo_cli.errors import DataError

    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model_dir,
        train=DEMO_DATA_DIR / "demo_train.jsonl",
        max_length=256,
        max_prompt_length=128,
    )
    out = tmp_path / "prepared"
    done = cli(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_train_conversational.jsonl"),
        "--output", str(out), "--recipe", str(recipe), "--format", "conversational",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ok = load_prepared(out, tok, make_training(max_length=256, max_prompt_length=128))
    assert len(ok.dataset) == 300
    try:
        load_prepared(out, tok, make_training(max_length=512, max_prompt_length=128))
    except DataError as err:
        assert "max_length: prepared with 256, this run uses 512" in err.message
    else:
        raise AssertionError("a prepared folder with other lengths was accepted")


def test_scored_format_with_columns(cli: Cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    done = cli(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_scored.jsonl"),
        "--output", str(tmp_path / "p"), "--tokenizer", str(tiny_model_dir),
        "--columns", "prompt=source,candidates=translations", "--format", "scored",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "tied_scores: 4" in done.output and "prepared 34 pairs" in done.output


def test_errors_are_one_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = cpo_process(
        "prepare", "--dataset", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "p"),
        "--tokenizer", str(tiny_model_dir),
    )  # fmt: skip
    assert (
        done.exit_code == 1
        and "dataset file not found" in done.output
        and "Traceback" not in done.output
    )
    done = cpo_process(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_messy.jsonl"),
        "--output", str(tmp_path / "p"), "--tokenizer", str(tiny_model_dir), "--strict",
    )  # fmt: skip
    assert done.exit_code == 1 and "--strict" in done.output and not (tmp_path / "p").exists()
    done = cpo_process("prepare", "--dataset", "x.jsonl", "--output", str(tmp_path / "p"))
    assert done.exit_code == 1 and "exactly one of --recipe and --tokenizer" in done.output


def test_cpo_train_reads_the_prepared_folder_and_refuses_other_lengths(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model_dir,
        train=tmp_path / "prepared",
        out=tmp_path / "out",
        max_steps=1,
        per_device_train_batch_size=4,
        max_length=128,
        max_prompt_length=64,
        save_strategy="no",
        report_to="none",
    )
    done = cpo_process(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_train.jsonl"),
        "--output", str(tmp_path / "prepared"), "--recipe", str(recipe),
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    done = cpo_process("train", str(recipe))
    assert done.exit_code == 0, done.output
    assert "300 pairs" in done.output and (tmp_path / "out" / "model.safetensors").is_file()
    done = cpo_process("train", str(recipe), "training.max_length=256")
    assert done.exit_code == 1
    assert "max_length: prepared with 128, this run uses 256" in done.output


# ---- published layouts through the real CLI ---------------------------------------------------


def test_prepare_help_lists_every_format_and_canonical_name(cli: Cli) -> None:
    from cpo_cli.format_names import CANONICAL_COLUMNS, RAW_DATA_FORMATS

    done = cli("prepare", "--help")
    assert done.exit_code == 0
    for name in (*RAW_DATA_FORMATS, *CANONICAL_COLUMNS):
        assert f"  {name} " in done.output, name


def test_published_layouts_through_the_cli(cli: Cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    from published import alma_r, helpsteer3, hh_rlhf, write_jsonl, write_parquet, write_readme

    hh = write_jsonl(tmp_path / "hh-rlhf" / "helpful-base" / "train.jsonl.gz", hh_rlhf())
    done = cli(
        "prepare", "--dataset", str(hh), "--output", str(tmp_path / "p1"),
        "--tokenizer", str(tiny_model_dir),
    )  # fmt: skip
    assert done.exit_code == 0 and "prepared 2 pairs" in done.output, done.output
    hs = tmp_path / "HelpSteer3"
    write_jsonl(hs / "preference" / "train.jsonl.gz", helpsteer3())
    write_readme(hs, {"preference": {"train": "preference/train.jsonl.gz"}})
    done = cli(
        "prepare", "--dataset", str(hs), "--output", str(tmp_path / "p2"),
        "--tokenizer", str(tiny_model_dir),
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "prepared 2 pairs" in done.output and "tie: 1" in done.output
    alma = write_parquet(tmp_path / "alma" / "de-en" / "train-00000-of-00001.parquet", alma_r())
    done = cli(
        "prepare", "--dataset", str(alma), "--output", str(tmp_path / "p3"),
        "--tokenizer", str(tiny_model_dir), "--format", "alma_r",
        "--directions", "de-en,en-de", "--scorer", "kiwi_xcomet",
    )  # fmt: skip
    assert done.exit_code == 0 and "prepared 5 pairs" in done.output, done.output


def test_two_datasets_are_a_mixture_with_per_source_counts(
    cli: Cli, tiny_model_dir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    done = cli(
        "prepare", "--dataset", str(DEMO_DATA_DIR / "demo_eval.jsonl"),
        "--dataset", str(DEMO_DATA_DIR / "demo_messy.jsonl"),
        "--output", str(tmp_path / "p"), "--tokenizer", str(tiny_model_dir), "--json", str(report),
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "prepared 63 pairs" in done.output
    data = json.loads(report.read_text())
    assert [(s["rows_in"], s["rows_kept"]) for s in data["sources"]] == [(60, 60), (15, 3)]
    assert [p["source"] for p in data["parts"]] == [
        str(DEMO_DATA_DIR / "demo_eval.jsonl"),
        str(DEMO_DATA_DIR / "demo_messy.jsonl"),
    ]


def test_bad_data_is_never_a_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os

    noise = tmp_path / "noise.jsonl.gz"
    noise.write_bytes(os.urandom(2048))
    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text('{"question": "q", "answer": "a"}\n' * 3)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'[{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}]')
    for path, expected in (
        (noise, "noise.jsonl.gz: cannot read gzip data"),
        (dropped, "cannot tell the preference format from the columns question, answer"),
        (latin1, "latin1.json:1: bytes that are not UTF-8 text"),
    ):
        done = cpo_process(
            "prepare", "--dataset", str(path), "--output", str(tmp_path / "p"),
            "--tokenizer", str(tiny_model_dir),
        )  # fmt: skip
        assert done.exit_code == 1 and "Traceback" not in done.output, done.output
        assert expected in done.output and "hint:" in done.output, done.output
