"""Local paths in what `cpo push` publishes: Hub ids as they are, local paths as `name (local)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpo_cli.public_paths import (
    PathScrubber,
    is_hub_id,
    public_json_fields,
    public_name,
    public_recipe,
    run_roots,
)


def test_is_hub_id() -> None:
    assert is_hub_id("org/name") and is_hub_id("gpt2")
    assert not is_hub_id("./local/dir") and not is_hub_id("/abs/path") and not is_hub_id("~/m")
    assert not is_hub_id("data.jsonl") and not is_hub_id(None) and not is_hub_id("a/b/c")


def test_is_hub_id_is_false_for_an_existing_relative_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "outputs" / "run").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("outputs/run")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("builtin:smollm2-135m-instruct", "builtin:smollm2-135m-instruct"),
        ("/home/alice/models/llama", "llama (local)"),
        ("/home/alice/models/llama/", "llama (local)"),
        ("~/data/train.jsonl", "train.jsonl (local)"),
        ("data/train.jsonl", "train.jsonl (local)"),
        ("C:\\Users\\alice\\train.jsonl", "train.jsonl (local)"),
        ("train.jsonl (local)", "train.jsonl (local)"),  # already public
    ],
)
def test_public_name(value: str, expected: str) -> None:
    assert public_name(value) == expected


def test_public_recipe_reduces_path_fields_and_any_absolute_path() -> None:
    recipe = {
        "model": {
            "name_or_path": "/home/alice/m",
            "tokenizer_name_or_path": "org/tok",
            "chat_template": "/home/alice/t.jinja",
        },
        "data": {
            "train": {"path": "org/prefs", "split": "train"},
            "eval": {"path": "data/eval.jsonl"},
        },
        "training": {
            "output_dir": "outputs/run",
            "logging_dir": None,
            "resume_from_checkpoint": "last",
            "deepspeed": "/home/alice/ds.json",
            "run_name": "/home/alice/odd-name",
            "beta": 0.1,
            "report_to": ["none"],
        },
    }
    public = public_recipe(recipe)
    assert public["model"] == {
        "name_or_path": "m (local)",
        "tokenizer_name_or_path": "org/tok",
        "chat_template": "t.jinja (local)",
    }
    assert public["data"]["train"] == {"path": "org/prefs", "split": "train"}
    assert public["data"]["eval"] == {"path": "eval.jsonl (local)"}
    training = public["training"]
    assert training["output_dir"] == "run (local)" and training["logging_dir"] is None
    assert training["resume_from_checkpoint"] == "last"
    assert training["deepspeed"] == "ds.json (local)" and training["run_name"] == "odd-name (local)"
    assert training["beta"] == 0.1 and training["report_to"] == ["none"]
    assert recipe["model"]["name_or_path"] == "/home/alice/m"  # the input is not changed


def test_inline_chat_template_is_kept() -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    recipe = {"model": {"name_or_path": "gpt2", "chat_template": template}}
    assert public_recipe(recipe)["model"]["chat_template"] == template


def test_public_json_fields() -> None:
    report = {
        "model": "outputs/run",
        "dataset": "org/held",
        "compare": {"model": "/home/alice/base"},
        "note": "/home/alice/x",
        "metrics": {"eval_loss": 1.0},
    }
    public = public_json_fields(report, ("dataset", "compare.model", "a.b"), local=("model",))
    assert public == {
        "model": "run (local)",
        "dataset": "org/held",
        "compare": {"model": "base (local)"},
        "note": "x (local)",
        "metrics": {"eval_loss": 1.0},
    }


def test_scrubber_replaces_the_runs_paths_and_leaves_vocabulary_alone() -> None:
    scrubber = PathScrubber(["/work/alice/run", "/tmp", "/"], home="/root")
    text = json.dumps(
        {
            "best": "/work/alice/run/checkpoint-8",
            "base": "/root/.cache/cpo/smollm2",
            "tag": "base_model:adapter:/work/alice/run",
            "vocab": {"/root": 1, "/tmp": 2, "/work/alice/runner": 3},
        }
    )
    out = json.loads(scrubber.scrub(text))
    assert out["best"] == "checkpoint-8 (local)"
    assert out["base"] == "smollm2 (local)"
    assert out["tag"] == "base_model:adapter:run (local)"
    # the home alone, a one-level root and a longer name sharing a prefix are not paths of
    # the run (`/work/alice/runner` is matched only as far as the root, which is a known limit
    # of a text search, so roots are whole folders of the run)
    assert "/root" in out["vocab"] and "/tmp" in out["vocab"]
    assert scrubber.find(scrubber.scrub(text)) == []


def test_run_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}")
    monkeypatch.setenv("CPO_CACHE", str(tmp_path / "cache"))
    recipe = {"data": {"train": {"path": "data/train.jsonl"}}, "model": {"name_or_path": "/m/x"}}
    roots = run_roots(tmp_path / "out", recipe, None, "builtin:x")
    assert str(tmp_path / "out") in roots and str(tmp_path / "data" / "train.jsonl") in roots
    assert "/m/x" in roots and str(tmp_path / "cache") in roots and str(tmp_path) in roots
