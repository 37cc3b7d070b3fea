"""`cpo push` planning: what would be uploaded, settings precedence, redaction — no network."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cpo_cli.errors import HubError
from cpo_cli.hub import plan_push, resolve_settings
from cpo_cli.upload_files import redact_recipe_text


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-1" / "model.safetensors").write_bytes(b"1")
    (out / "checkpoint-10" / "model.safetensors").write_bytes(b"10")
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"w" * 1000)
    (out / "README.md").write_text("old card")
    (out / ".env").write_text("SECRET=1")
    (out / "recipe.yaml").write_text(
        "model: {name_or_path: gpt2}\ntraining:\n  hub_model_id: bob/model\n"
        "  hub_private_repo: true\n  hub_revision: dev\n  hub_token: hf_abc\n"
    )
    return out


def test_recipe_settings_and_cli_precedence(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    s = resolve_settings(run_dir)
    assert (s.repo_id, s.private, s.revision, s.token_source) == (
        "bob/model",
        True,
        "dev",
        "recipe (training.hub_token)",
    )
    s = resolve_settings(run_dir, repo_id="carol/x", token="hf_cli", private=False, revision="v2")
    assert (s.repo_id, s.private, s.revision, s.token, s.token_source) == (
        "carol/x",
        False,
        "v2",
        "hf_cli",
        "--token",
    )


def test_env_token_when_recipe_has_none(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = run_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("hf_abc", "'***'"))
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_settings(run_dir).token_source == "HF_TOKEN"


def test_bad_or_missing_repo_id(run_dir: Path) -> None:
    with pytest.raises(HubError, match="USER/NAME"):
        resolve_settings(run_dir, repo_id="no-slash")
    (run_dir / "recipe.yaml").unlink()
    with pytest.raises(HubError, match="--repo-id"):
        resolve_settings(run_dir)


def test_plan_lists_every_file_with_size(run_dir: Path) -> None:
    plan = plan_push(run_dir, resolve_settings(run_dir), cpo_version="t")
    by_path = {f.path_in_repo: f for f in plan.files}
    assert set(by_path) == {"config.json", "model.safetensors", "recipe.yaml", "README.md"}
    assert by_path["model.safetensors"].size == 1000
    assert by_path["README.md"].content == plan.card.encode()
    assert b"hf_abc" not in (by_path["recipe.yaml"].content or b"")
    assert plan.total_bytes == sum(f.size for f in plan.files)
    assert (run_dir / "README.md").read_text() == "old card"  # local folder untouched


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("every_save", set()),
        ("checkpoint", {"last-checkpoint"}),
        ("all_checkpoints", {"checkpoint-1", "checkpoint-10"}),
    ],
)
def test_checkpoints_follow_hub_strategy(run_dir: Path, strategy: str, expected: set) -> None:
    recipe = run_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text() + f"  hub_strategy: {strategy}\n")
    plan = plan_push(run_dir, resolve_settings(run_dir), cpo_version="t")
    assert {f.path_in_repo.split("/")[0] for f in plan.files if "/" in f.path_in_repo} == expected


def test_not_a_model_folder(tmp_path: Path) -> None:
    settings = resolve_settings(tmp_path, repo_id="a/b", token="x")
    with pytest.raises(HubError, match="not a trained model folder"):
        plan_push(tmp_path, settings, cpo_version="t")


def test_redact_nested_secrets_and_keeps_clean_text() -> None:
    clean = "training:\n  beta: 0.1  # comment kept\n"
    assert redact_recipe_text(clean) == clean
    dirty = "training:\n  hub_token: hf_x\n  push_to_hub_token: hf_y\nreport: {wandb_api_key: k}\n"
    out = redact_recipe_text(dirty)
    assert "hf_x" not in out and "hf_y" not in out and "k\n" not in out.split("wandb_api_key")[1]


def test_adapter_config_names_the_hub_base_in_the_upload_only(tmp_path: Path) -> None:
    import json

    out = tmp_path / "run"
    out.mkdir()
    local = {"base_model_name_or_path": str(tmp_path / "cache" / "smollm2"), "r": 8}
    (out / "adapter_config.json").write_text(json.dumps(local))
    (out / "recipe.yaml").write_text("model: {name_or_path: 'builtin:smollm2-135m-instruct'}\n")
    plan = plan_push(out, resolve_settings(out, repo_id="a/b", token="x"), cpo_version="t")
    adapter = next(f for f in plan.files if f.path_in_repo == "adapter_config.json")
    uploaded = json.loads(adapter.content or b"")
    assert uploaded == {**local, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert json.loads((out / "adapter_config.json").read_text()) == local


def test_uploads_hide_what_the_recipe_layer_hides() -> None:
    """One definition of a secret (`cpo_cli.recipe.secrets`): what `cpo recipe show` and the
    saved recipes hide, an upload hides too, copies of the value included."""
    from cpo_cli.recipe.secrets import redact_mapping

    text = "training:\n  hub_token: hf_x1\nextra:\n  db_password: pw-secret\n  note: pw-secret\n"
    out = redact_recipe_text(text)
    assert "hf_x1" not in out and "pw-secret" not in out
    assert yaml.safe_load(out) == redact_mapping(yaml.safe_load(text))


def test_uploaded_text_names_local_paths_by_file_name_only(tmp_path: Path) -> None:
    import json

    base = tmp_path / "models" / "llama"
    base.mkdir(parents=True)
    out = tmp_path / "run"
    ckpt = out / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (out / "recipe.yaml").write_text(
        f"model: {{name_or_path: {base}}}\n"
        f"data: {{train: {{path: {tmp_path / 'd' / 'train.jsonl'}}}}}\n"
        f"training: {{output_dir: {out}, hub_strategy: all_checkpoints}}\n"
    )
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    best = {"global_step": 2, "best_checkpoint": str(ckpt)}
    (out / "train_results.json").write_text(json.dumps(best))
    (out / "tokenizer.json").write_text(json.dumps({"vocab": {"/root": 5, "/tmp": 6}}))
    (ckpt / "README.md").write_text(f"---\nbase_model: {base}\n---\n")
    (ckpt / "trainer_state.json").write_text(json.dumps(best))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    plan = plan_push(out, resolve_settings(out, repo_id="a/b", token="x"), cpo_version="t")
    uploaded = {
        f.path_in_repo: (f.content if f.content is not None else Path(f.source or "").read_bytes())
        for f in plan.files
    }
    for name, data in uploaded.items():
        assert str(tmp_path).encode() not in data, name
    adapter = json.loads(uploaded["adapter_config.json"])
    assert adapter == {"base_model_name_or_path": "llama (local)"}
    assert json.loads(uploaded["train_results.json"])["best_checkpoint"] == "checkpoint-2 (local)"
    assert b"base_model: llama (local)" in uploaded["checkpoint-2/README.md"]
    recipe = uploaded["recipe.yaml"].decode()
    assert "name_or_path: llama (local)" in recipe and "path: train.jsonl (local)" in recipe
    assert uploaded["tokenizer.json"] == before[out / "tokenizer.json"]  # vocabulary untouched
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
