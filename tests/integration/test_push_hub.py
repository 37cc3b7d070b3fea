"""`cpo push` against the real huggingface_hub client and a small Hub stand-in on loopback
(127.0.0.1, HF_ENDPOINT): the request sequence of a successful upload, and every error path
(no token, unreachable, 401, 403, 409, missing revision) as one line with the local folder
left byte-for-byte untouched."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import FakeHub, Override, Result

# ----------------------------------------------------------------------------- fixtures

TOKEN = "hf_testsecretTOKEN1234567890"


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """A trained output folder as the engine leaves it (small fake weights)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    (out / "tokenizer_config.json").write_text("{}")
    (out / "recipe.yaml").write_text(
        "model:\n  name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "data:\n  train:\n    path: demo_train.jsonl\n"
        "training:\n  loss_type: simpo\n  beta: 2.0\n  cpo_alpha: 0.5\n"
        f"  hub_token: {TOKEN}\n  hub_model_id: alice/from-recipe\n"
    )
    (out / "final_metrics.json").write_text(
        json.dumps({"train_loss": 0.61, "eval_loss": 0.55, "eval_rewards/accuracies": 0.8})
    )
    ckpt = out / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "optimizer.pt").write_bytes(b"x" * 100)
    return out


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_push(output_dir: Path, **kwargs: Any) -> str:
    from cpo_cli.hub import plan_push, resolve_settings, upload

    settings = resolve_settings(output_dir, **kwargs)
    return upload(plan_push(output_dir, settings, cpo_version="test"))


# ----------------------------------------------------------------------------- success


def test_upload_request_sequence_and_payload(fake_hub: FakeHub, output_dir: Path) -> None:
    before = folder_digest(output_dir)
    url = run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN, private=True)

    assert url.endswith("/alice/tiny-cpo/commit/" + "a" * 40)
    assert fake_hub.calls() == [
        "POST /api/repos/create",
        "POST /api/validate-yaml",
        "POST /api/models/alice/tiny-cpo/preupload/main",
        "POST /api/models/alice/tiny-cpo/commit/main",
    ]
    create = json.loads(fake_hub.requests[0].body)
    assert create["name"] == "tiny-cpo" and create["organization"] == "alice"
    assert create.get("visibility") == "private" or create.get("private") is True
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake_hub.requests)

    lines = fake_hub.commit_lines()
    assert lines[0]["key"] == "header"
    files = {ln["value"]["path"]: ln["value"] for ln in lines[1:] if ln["key"] == "file"}
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "recipe.yaml",
        "final_metrics.json",
        "README.md",
    }  # checkpoints stay local with the default hub_strategy
    recipe = base64.b64decode(files["recipe.yaml"]["content"]).decode()
    assert TOKEN not in recipe and "***" in recipe
    card = base64.b64decode(files["README.md"]["content"]).decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "- simpo" in card and "- cpo" in card
    weights = base64.b64decode(files["model.safetensors"]["content"])
    assert weights == (output_dir / "model.safetensors").read_bytes()
    assert folder_digest(output_dir) == before


def test_revision_creates_branch_then_commits_to_it(fake_hub: FakeHub, output_dir: Path) -> None:
    run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN, revision="exp-1")
    assert fake_hub.calls() == [
        "POST /api/repos/create",
        "POST /api/models/alice/tiny-cpo/branch/exp-1",
        "POST /api/validate-yaml",
        "POST /api/models/alice/tiny-cpo/preupload/exp-1",
        "POST /api/models/alice/tiny-cpo/commit/exp-1",
    ]


def test_repo_and_token_come_from_the_saved_recipe(fake_hub: FakeHub, output_dir: Path) -> None:
    run_push(output_dir)
    assert fake_hub.calls()[-1] == "POST /api/models/alice/from-recipe/commit/main"
    assert fake_hub.requests[0].headers.get("authorization") == f"Bearer {TOKEN}"


def test_all_checkpoints_strategy_uploads_checkpoints(fake_hub: FakeHub, output_dir: Path) -> None:
    recipe = output_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "  hub_strategy: all_checkpoints\n")
    run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN)
    paths = {ln["value"]["path"] for ln in fake_hub.commit_lines() if ln["key"] == "file"}
    assert "checkpoint-2/optimizer.pt" in paths


# ----------------------------------------------------------------------------- failures


def _fail(status: int, route_part: str, error_code: str | None = None) -> Override:
    def override(method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]] | None:
        if route_part in path:
            headers = {"X-Error-Code": error_code} if error_code else {}
            headers["X-Error-Message"] = f"refused ({status}) token {TOKEN}"
            return status, {"error": f"refused ({status}) for token {TOKEN}"}, headers
        return None

    return override


@pytest.mark.parametrize(
    ("status", "route", "error_code", "expected"),
    [
        (401, "/api/repos/create", None, "rejected the token (401)"),
        (403, "/api/", None, "no write permission on alice/tiny-cpo (403)"),
        (409, "/commit/", None, "conflict on alice/tiny-cpo (409)"),
        (404, "/commit/", "RevisionNotFound", "revision 'exp-9' not found in alice/tiny-cpo"),
    ],
)
def test_http_errors_are_one_redacted_line(
    fake_hub: FakeHub,
    output_dir: Path,
    status: int,
    route: str,
    error_code: str | None,
    expected: str,
) -> None:
    from cpo_cli.errors import HubError

    fake_hub.override = _fail(status, route, error_code)
    before = folder_digest(output_dir)
    revision = "exp-9" if error_code == "RevisionNotFound" else None
    with pytest.raises(HubError) as info:
        run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN, revision=revision)
    text = "\n".join(info.value.lines())
    assert expected in info.value.message
    assert "\n" not in info.value.message
    assert TOKEN not in text
    assert folder_digest(output_dir) == before
    assert len(fake_hub.requests) <= 6  # no retry storm


def test_no_token_fails_before_any_request(
    fake_hub: FakeHub, output_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    from cpo_cli.errors import HubError

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    recipe = output_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(TOKEN, "null"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        run_push(output_dir, repo_id="alice/tiny-cpo")
    assert fake_hub.requests == []


def test_unreachable_endpoint(
    online: None, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.errors import HubError

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    before = folder_digest(output_dir)
    with pytest.raises(HubError, match=f"cannot reach the Hub at http://127.0.0.1:{port}"):
        run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN)
    assert folder_digest(output_dir) == before


def test_offline_mode_is_a_clear_error(output_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from cpo_cli.errors import HubError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="offline mode is on"):
        run_push(output_dir, repo_id="alice/tiny-cpo", token=TOKEN)


# ----------------------------------------------------------------------------- the command


def test_cli_dry_run_lists_files_and_card_without_network(
    fake_hub: FakeHub,
    output_dir: Path,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("dry run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = folder_digest(output_dir)
    card_copy = output_dir.parent / "card.md"
    code, out, err = cli(
        "push",
        str(output_dir),
        "--repo-id",
        "alice/tiny-cpo",
        "--dry-run",
        "--card",
        str(card_copy),
    )
    assert code == 0, err
    assert fake_hub.requests == []
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "README.md"):
        assert name in out
    assert "2,048" in out  # sizes listed (model.safetensors)
    assert "7 files" in out and "would push to alice/tiny-cpo" in out
    assert "token: recipe (training.hub_token)" in out and TOKEN not in out + err
    assert "## How to use" in out and card_copy.read_text().startswith("---\n")
    assert folder_digest(output_dir) == before


def test_cli_push_success_and_failure_exit_codes(
    fake_hub: FakeHub, output_dir: Path, cli: Callable[..., Result]
) -> None:
    code, out, err = cli("push", str(output_dir), "--repo-id", "alice/tiny-cpo")
    assert code == 0, err
    assert "pushed 7 files to alice/tiny-cpo" in out

    fake_hub.override = _fail(401, "/api/repos/create")
    code, out, err = cli("push", str(output_dir), "--token", TOKEN)
    assert code == 1 and "bytes" in out  # the plan was shown before the attempt
    assert err.splitlines()[0].startswith("error: the Hub at http://127.0.0.1:")
    assert "rejected the token (401)" in err and TOKEN not in out + err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- during training


def training_config(**fields: Any) -> Any:
    from cpo_cli.recipe import TrainingConfig

    return TrainingConfig(**{"push_to_hub": True, "hub_token": TOKEN, **fields})


@pytest.fixture
def checkpoint(output_dir: Path) -> Path:
    ckpt = output_dir / "checkpoint-2"
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"w" * 64)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "scheduler.json").write_text("{}")
    (ckpt / "cpo_manifest.json").write_text("{}")
    (ckpt / "recipe.yaml").write_text(f"training:\n  hub_token: {TOKEN}\n")
    (ckpt / "accelerate").mkdir()
    (ckpt / "accelerate" / "optimizer.bin").write_bytes(b"o" * 10)
    return ckpt


def committed_paths(hub: FakeHub) -> set[str]:
    return {ln["value"]["path"] for ln in hub.commit_lines() if ln["key"] == "file"}


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("every_save", set()),
        ("checkpoint", {"last-checkpoint/accelerate/optimizer.bin"}),
        ("all_checkpoints", {"checkpoint-2/accelerate/optimizer.bin"}),
    ],
)
def test_push_checkpoint_follows_hub_strategy(
    fake_hub: FakeHub, checkpoint: Path, strategy: str, extra: set[str]
) -> None:
    from cpo_cli.hub import push_checkpoint

    training = training_config(hub_model_id="alice/run", hub_strategy=strategy)
    assert push_checkpoint(checkpoint, training, cpo_version="t") is not None
    paths = committed_paths(fake_hub)
    assert {"config.json", "model.safetensors", "recipe.yaml", "README.md"} <= paths
    assert "trainer_state.json" not in paths and "optimizer.bin" not in paths
    assert "scheduler.json" not in paths and "cpo_manifest.json" not in paths
    assert extra <= paths
    nested = {p.split("/")[0] for p in paths if "/" in p}
    assert nested == {e.split("/")[0] for e in extra}  # only the strategy's checkpoint folder
    for line in fake_hub.commit_lines():
        if line["value"].get("path", "").endswith("recipe.yaml"):
            assert TOKEN not in base64.b64decode(line["value"]["content"]).decode()


def test_push_checkpoint_end_strategy_and_failures_do_not_stop_training(
    fake_hub: FakeHub, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cpo_cli.hub import push_checkpoint

    assert push_checkpoint(checkpoint, training_config(hub_strategy="end"), cpo_version="t") is None
    assert fake_hub.requests == []
    fake_hub.override = _fail(403, "/api/")
    training = training_config(hub_model_id="alice/run")
    assert push_checkpoint(checkpoint, training, cpo_version="t") is None  # warned, not raised
    err = capsys.readouterr().err
    assert "warning: push of checkpoint-2 to the Hub failed: no write permission" in err
    assert TOKEN not in err


def test_push_final_resolves_the_namespace_and_raises(fake_hub: FakeHub, output_dir: Path) -> None:
    from cpo_cli.errors import HubError
    from cpo_cli.hub import push_final

    training = training_config(hub_model_id="my-run", hub_private_repo=True)
    url = push_final(output_dir, training, cpo_version="t")
    assert url is not None and "/alice/my-run/commit/" in url
    assert fake_hub.calls()[0] == "GET /api/whoami-v2"
    assert fake_hub.calls()[-1] == "POST /api/models/alice/my-run/commit/main"
    assert push_final(output_dir, training_config(push_to_hub=False), cpo_version="t") is None

    fake_hub.override = _fail(409, "/commit/")
    with pytest.raises(HubError, match="conflict on alice/run"):
        push_final(output_dir, training_config(hub_model_id="alice/run"), cpo_version="t")


def test_cli_without_token_fails_before_listing(
    output_dir: Path,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    recipe = output_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(TOKEN, "'***'"))
    code, out, err = cli("push", str(output_dir))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "error: no Hugging Face token: cannot push",
        "hint: pass --token, set HF_TOKEN, set training.hub_token, or run `hf auth login`",
    ]


# ----------------------------------------------------------------------------- trained folders


@dataclass
class TrainedRuns:
    """Tiny runs trained for real, under a user-like folder of the session's temporary root
    (`base`, which also holds the tiny model and the prepared-data cache): the data files, the
    recipes and the outputs."""

    base: Path
    root: Path
    full: Path
    lora: Path
    recipe: Path


def _train_tiny(model_dir: Path, home: Path, name: str, *, peft: dict[str, Any] | None) -> Path:
    import shutil

    from support import write_recipe

    from cpo_cli.assets import DEMO_DATA_DIR
    from cpo_cli.engine.loop import train
    from cpo_cli.recipe import load_recipe

    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    for file in ("demo_train.jsonl", "demo_eval.jsonl"):
        shutil.copy(DEMO_DATA_DIR / file, data / file)
    out = home / "runs" / name
    recipe = write_recipe(
        home / f"{name}.yaml",
        model_dir,
        train=data / "demo_train.jsonl",
        eval=data / "demo_eval.jsonl",
        out=out,
        train_rows=16,
        eval_rows=8,
        peft=peft,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        max_length=128,
        max_prompt_length=64,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        report_to="none",
        disable_tqdm=True,
        hub_strategy="all_checkpoints",
        hub_token=TOKEN,
    )
    train(load_recipe(recipe), show_progress=False)
    return out


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, private_cache: Path
) -> TrainedRuns:
    root = tmp_path_factory.mktemp("publish")
    home = root / "home" / "alice"
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    full = _train_tiny(tiny_model_dir, home, "full", peft=None)
    adapter = _train_tiny(tiny_model_dir, home, "lora", peft=lora)
    base = tmp_path_factory.getbasetemp()
    return TrainedRuns(base, root, full, adapter, home / "full.yaml")


def uploaded_files(hub: FakeHub) -> dict[str, bytes]:
    """Every file of the last commit, as the Hub received it."""
    return {
        ln["value"]["path"]: base64.b64decode(ln["value"]["content"])
        for ln in hub.commit_lines()
        if ln["key"] == "file"
    }


def local_paths_in(data: bytes, runs: TrainedRuns) -> list[str]:
    """This machine's folders in `data`: the session's temporary root (model, data, runs,
    cache), the home folder and the working folder."""
    import os

    paths = {
        str(runs.base),
        str(runs.base.resolve()),
        str(Path.home()) + os.sep,
        str(Path.cwd()) + os.sep,
    }
    return [p for p in paths if p.encode() in data]


def test_dry_run_card_of_a_trained_folder_validates_and_holds_the_model_index(
    trained: TrainedRuns, cli: Callable[..., Result]
) -> None:
    from huggingface_hub import ModelCard

    card_file = trained.root / "card.md"
    code, out, err = cli(
        "push",
        str(trained.full),
        "--repo-id",
        "alice/tiny",
        "--dry-run",
        "--card",
        str(card_file),
    )
    assert code == 0, err
    card = ModelCard(card_file.read_text(encoding="utf-8"))  # huggingface_hub's own parsing
    results = {r.metric_name: r for r in card.data.eval_results}
    final_eval = [
        json.loads(line)
        for line in (trained.full / "metrics.jsonl").read_text().splitlines()
        if "eval_loss" in line
    ][-1]
    assert card.data.model_name == "tiny" and "eval_rewards/accuracies" in results
    accuracy = results["eval_rewards/accuracies"]
    assert accuracy.metric_value == pytest.approx(final_eval["eval_rewards/accuracies"], rel=1e-5)
    assert accuracy.dataset_name == "demo_eval.jsonl (local)" and accuracy.task_type == (
        "text-generation"
    )
    assert card.data.library_name == "transformers" and "cpo" in card.data.tags
    assert str(trained.root) not in out + err  # neither the table nor the printed card


def test_no_local_path_in_any_uploaded_byte(
    trained: TrainedRuns, fake_hub: FakeHub, cli: Callable[..., Result]
) -> None:
    """A full run (with a `cpo eval --json` report in it) and a LoRA run, merged and not,
    pushed with every checkpoint: no byte the Hub receives names this machine's folders."""
    before = {run: folder_digest(run) for run in (trained.full, trained.lora)}
    report = trained.root / "eval.json"
    code, _, err = cli(
        "eval", str(trained.recipe), "--model", str(trained.full), "--json", str(report)
    )
    assert code == 0, err
    pushes = [
        (trained.full, ["--eval-json", str(report)]),
        (trained.lora, []),
        (trained.lora, ["--merge"]),
    ]
    for folder, extra in pushes:
        fake_hub.requests.clear()
        code, _, err = cli("push", str(folder), "--repo-id", "alice/tiny", "--token", TOKEN, *extra)
        assert code == 0, err
        files = uploaded_files(fake_hub)
        assert any(p.startswith("checkpoint-2/") for p in files)  # all_checkpoints
        for name, data in files.items():
            assert local_paths_in(data, trained) == [], name
            assert TOKEN.encode() not in data, name
        for request in fake_hub.requests:
            assert local_paths_in(request.body, trained) == [], request.path
        recipe = files["recipe.yaml"].decode()
        assert "demo_train.jsonl (local)" in recipe and "name_or_path: llama (local)" in recipe
        assert TOKEN not in recipe
    assert {run: folder_digest(run) for run in (trained.full, trained.lora)} == before


def test_push_merge_uploads_a_checked_merged_model(
    trained: TrainedRuns, fake_hub: FakeHub, cli: Callable[..., Result]
) -> None:
    from huggingface_hub import ModelCard

    code, _, err = cli(
        "push", str(trained.lora), "--repo-id", "alice/m", "--merge", "--token", TOKEN
    )
    assert code == 0, err
    files = uploaded_files(fake_hub)
    assert "model.safetensors" in files and "merge_check.json" in files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & set(files)
    check = json.loads(files["merge_check.json"])
    assert check["passed"] is True and check["pairs_from"] == "data.eval"
    assert 0 <= check["merge_max_diff"] <= check["merge_tolerance"] == 1e-3
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and "lora" in card.data.tags
    assert "## LoRA merge check" in card.text and f"{check['merge_max_diff']:.2g}" in card.text
    assert "merge passed cpo's check" in card.text


def test_push_merge_refuses_a_broken_merge_before_any_request(
    trained: TrainedRuns,
    fake_hub: FakeHub,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from peft.tuners.lora import layer

    delta = layer.Linear.get_delta_weight
    monkeypatch.setattr(layer.Linear, "get_delta_weight", lambda s, a: 3 * delta(s, a))
    before = folder_digest(trained.lora)
    code, _, err = cli(
        "push", str(trained.lora), "--repo-id", "alice/m", "--merge", "--token", TOKEN
    )
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("error: LoRA merge refused: largest log-prob difference per answer")
    assert "on 4 pairs of data.eval (8 answers): merged " in first
    assert "(tolerance 0.001): beyond the tolerance" in first
    assert fake_hub.requests == [] and folder_digest(trained.lora) == before


def test_push_merge_needs_an_adapter_and_eval_json_must_be_of_the_folder(
    trained: TrainedRuns, cli: Callable[..., Result]
) -> None:
    code, _, err = cli("push", str(trained.full), "--repo-id", "a/b", "--merge", "--dry-run")
    assert code == 2 and "--merge: " in err and "holds no LoRA adapter" in err
    code, _, err = cli("push", str(trained.full), "--repo-id", "a/b", "--merge-dtype", "float16")
    assert code == 2 and "add --merge" in err
    other = trained.root / "other.json"
    other.write_text(json.dumps({"model": str(trained.lora), "metrics": {"eval_loss": 1.0}}))
    code, _, err = cli(
        "push", str(trained.full), "--repo-id", "a/b", "--dry-run", "--eval-json", str(other)
    )
    assert code == 2 and "holds results for 'lora (local)', not for full" in err
