"""Publishing a trained output folder to the Hugging Face Hub (`cpo push`).

Two halves: `plan_push` decides, without any network call, what would be uploaded (every file and
its size, the generated model card, the recipe re-redacted); `upload` sends a plan through
`huggingface_hub` (create_repo → create_branch → one create_commit) and turns every failure into
a one-line `HubError` with the token scrubbed out. The local folder is only ever read."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import HubError
from cpo_cli.modelcard import collect_card_inputs, render_model_card
from cpo_cli.output_folder import find_recipe_file, read_recipe_dict
from cpo_cli.recipe.secrets import REDACTED
from cpo_cli.upload_files import Publishing, UploadFile

if TYPE_CHECKING:
    from cpo_cli.merge_report import MergeCheck
    from cpo_cli.output_folder import EvalSource
    from cpo_cli.recipe.training import TrainingConfig

#: Never uploaded: VCS/caches/locks, and anything hidden (`.env`, `.cache`, ...).
_ALWAYS_SKIP = ("*.lock", "__pycache__", "*.pyc", ".*")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")
#: Files of a LoRA output folder that a merged model replaces.
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class PushSettings:
    """Where and how to push; the token's value is never shown, only where it came from."""

    repo_id: str
    private: bool | None
    revision: str | None
    token: str | None
    token_source: str
    hub_strategy: str


@dataclass(frozen=True)
class PushPlan:
    settings: PushSettings
    files: list[UploadFile]
    card: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def resolve_settings(
    output_dir: Path,
    *,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
) -> PushSettings:
    """Command-line values win over the recipe saved in the output folder (`hub_model_id`,
    `hub_token`, `hub_private_repo`, `hub_revision`, `hub_strategy`); the token falls back to
    `HF_TOKEN` and then to a token saved by `hf auth login`."""
    recipe = read_recipe_dict(find_recipe_file(output_dir))
    training = recipe.get("training") or {}
    if not isinstance(training, Mapping):
        training = {}
    repo = repo_id or training.get("hub_model_id")
    if not repo:
        raise HubError(
            "no repository to push to: pass --repo-id USER/NAME "
            "or set training.hub_model_id in the recipe"
        )
    repo = str(repo)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        where = "--repo-id" if repo_id else "training.hub_model_id"
        raise HubError(f"{where} {repo!r} is not of the form USER/NAME (or ORG/NAME)")
    recipe_token = training.get("hub_token")
    if recipe_token in (REDACTED, "<redacted>"):
        recipe_token = None  # the saved recipe is redacted by design
    resolved_token, source = _resolve_token(token, recipe_token)
    return PushSettings(
        repo_id=repo,
        private=private if private is not None else _opt_bool(training.get("hub_private_repo")),
        revision=revision or training.get("hub_revision") or None,
        token=resolved_token,
        token_source=source,
        hub_strategy=str(training.get("hub_strategy") or "every_save"),
    )


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _resolve_token(cli_token: str | None, recipe_token: Any) -> tuple[str | None, str]:
    if cli_token:
        return cli_token, "--token"
    if isinstance(recipe_token, str) and recipe_token:
        return recipe_token, "recipe (training.hub_token)"
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"], "HF_TOKEN"
    try:
        from huggingface_hub.utils import get_token

        saved = get_token()
    except Exception:  # an unreadable token file is the same as none
        saved = None
    if saved:
        return saved, "saved login (hf auth login)"
    return None, "none"


def plan_push(
    output_dir: Path,
    settings: PushSettings,
    *,
    cpo_version: str,
    evaluation: EvalSource | None = None,
    merged_dir: Path | None = None,
    merge_check: MergeCheck | None = None,
) -> PushPlan:
    """Every file that would be uploaded, with its size; no network call. Text files go up with
    the run's local paths reduced to `name (local)` (`cpo_cli.public_paths`); `merged_dir`
    (`cpo push --merge`) holds merged weights that replace the folder's LoRA adapter."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise HubError(f"{output_dir}: no such output folder")
    if not any((output_dir / n).is_file() for n in ("config.json", "adapter_config.json")):
        raise HubError(
            f"{output_dir}: no config.json or adapter_config.json — not a trained model folder",
            hint="point `cpo push` at the output_dir of a finished `cpo train` run",
        )
    inputs = collect_card_inputs(
        output_dir, settings.repo_id, evaluation=evaluation, merge_check=merge_check
    )
    card = render_model_card(inputs, cpo_version=cpo_version)
    publishing = Publishing.of(output_dir, hub_base=inputs.base_model)
    files: list[UploadFile] = []
    replaced: set[str] = set()
    if merged_dir is not None:
        for path in sorted(p for p in Path(merged_dir).iterdir() if p.is_file()):
            files.append(publishing.file(path, path.name, note="merged LoRA model"))
        replaced = {f.path_in_repo for f in files} | set(_ADAPTER_FILES)
    for path in sorted(_walk(output_dir, settings.hub_strategy)):
        rel = path.relative_to(output_dir).as_posix()
        if rel == "README.md" or rel in replaced:
            continue  # the card is generated; merged weights replace the adapter
        files.append(publishing.file(path, _repo_path(rel, settings.hub_strategy)))
    card_bytes = card.encode()
    files.append(
        UploadFile("README.md", len(card_bytes), content=card_bytes, note="generated model card")
    )
    return PushPlan(settings=settings, files=files, card=card)


def _repo_path(rel: str, hub_strategy: str) -> str:
    """`hub_strategy: checkpoint` keeps the latest checkpoint as `last-checkpoint/` (the name
    the HF Trainer uses, so `resume_from_checkpoint` scripts find it)."""
    head, _, rest = rel.partition("/")
    if hub_strategy == "checkpoint" and rest and _CHECKPOINT_DIR.match(head):
        return f"last-checkpoint/{rest}"
    return rel


def _walk(output_dir: Path, hub_strategy: str) -> list[Path]:
    """Files of the output folder. Checkpoints go up only as `hub_strategy` asks:
    `all_checkpoints` → every `checkpoint-N/`, `checkpoint` → the latest one, else none."""
    checkpoints = sorted(
        (p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_DIR.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    keep = set()
    if hub_strategy == "all_checkpoints":
        keep = {p.name for p in checkpoints}
    elif hub_strategy == "checkpoint" and checkpoints:
        keep = {checkpoints[-1].name}
    out: list[Path] = []
    for root, dirs, names in os.walk(output_dir):
        rel_root = Path(root).relative_to(output_dir)
        dirs[:] = [
            d
            for d in dirs
            if not _skipped(d)
            and not (rel_root == Path(".") and _CHECKPOINT_DIR.match(d) and d not in keep)
        ]
        out += [Path(root) / n for n in names if not _skipped(n)]
    return out


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _ALWAYS_SKIP)


def require_token(settings: PushSettings) -> str:
    """The token, or the one-line error every push path gives without one."""
    if not settings.token:
        raise HubError(
            "no Hugging Face token: cannot push",
            hint="pass --token, set HF_TOKEN, set training.hub_token, or run `hf auth login`",
        )
    return settings.token


def upload(
    plan: PushPlan, *, endpoint: str | None = None, commit_message: str | None = None
) -> str:
    """Create the repo (and branch), then upload the plan as one commit; returns the commit URL.

    `endpoint` defaults to `HF_ENDPOINT` read now (huggingface_hub reads it once at import)."""
    settings = plan.settings
    token = require_token(settings)
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if constants.is_offline_mode():
        raise HubError(
            "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): cannot push",
            hint="unset HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE for this command",
        )
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    shown_endpoint = api.endpoint
    operations = [
        CommitOperationAdd(
            path_in_repo=f.path_in_repo,
            path_or_fileobj=f.content if f.content is not None else str(f.source),
        )
        for f in plan.files
    ]
    step = "create the repository"
    try:
        api.create_repo(settings.repo_id, private=settings.private, exist_ok=True)
        if settings.revision:
            step = f"create the branch {settings.revision!r}"
            api.create_branch(settings.repo_id, branch=settings.revision, exist_ok=True)
        step = "upload the files"
        info = api.create_commit(
            settings.repo_id,
            operations,
            commit_message=commit_message or "Upload model trained with cpo",
            revision=settings.revision,
        )
    except Exception as exc:  # every failure becomes one redacted line
        raise _as_hub_error(
            exc,
            step=step,
            repo_id=settings.repo_id,
            endpoint=shown_endpoint,
            revision=settings.revision,
            token=token,
        ) from None
    return str(info.commit_url)


def _as_hub_error(
    exc: Exception, *, step: str, repo_id: str, endpoint: str, revision: str | None, token: str
) -> HubError:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = None
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
    detail = _first_line(getattr(exc, "server_message", None) or str(exc))
    hint = None
    if isinstance(exc, OfflineModeIsEnabled):
        message = "offline mode is on: cannot push"
        hint = "unset HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE for this command"
    elif isinstance(exc, RevisionNotFoundError):
        message = f"revision {revision!r} not found in {repo_id}"
        hint = "set hub_revision to an existing branch, or let cpo create it"
    elif status == 401:
        message = f"the Hub at {endpoint} rejected the token (401) while trying to {step}"
        hint = "check the token (--token, HF_TOKEN or training.hub_token); it needs write access"
    elif status == 403:
        message = f"no write permission on {repo_id} (403) while trying to {step}"
        hint = "use a token with write access to this user or organisation"
    elif status == 409:
        message = f"conflict on {repo_id} (409) while trying to {step}: {detail}"
        hint = "another upload may be in progress, or the name is taken by another repo type"
    elif isinstance(exc, RepositoryNotFoundError) or status == 404:
        message = f"{repo_id} not found or not accessible (404) while trying to {step}"
    elif status is not None:
        message = f"the Hub at {endpoint} answered {status} while trying to {step}: {detail}"
    elif _is_network_error(exc):
        message = f"cannot reach the Hub at {endpoint} ({exc.__class__.__name__}): {detail}"
        hint = "check the network connection and HF_ENDPOINT"
    else:
        message = f"push failed while trying to {step}: {exc.__class__.__name__}: {detail}"
    return HubError(_scrub(message, token), hint=_scrub(hint, token) if hint else None)


def _is_network_error(exc: Exception) -> bool:
    import importlib

    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    for name in ("httpx2", "httpx"):  # huggingface_hub 2.x's HTTP client, 1.x's
        try:
            client = importlib.import_module(name)
        except ImportError:
            continue
        if isinstance(exc, client.TransportError):
            return True
    return False


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _scrub(text: str, token: str) -> str:
    return text.replace(token, REDACTED) if token else text


# ----------------------------------------------------------------------------- during training

#: Files of a checkpoint that are not the model (`every_save` mirrors the rest at the repo root):
#: the counters, the schedule's state and the manifest (it lists files the root does not have);
#: the optimizer and RNG states are in `accelerate/`, which is never mirrored.
_NOT_MODEL_FILES = ("trainer_state.json", "scheduler.json", "cpo_manifest.json")


def settings_from_training(training: TrainingConfig, output_dir: Path) -> PushSettings:
    """Push settings from the recipe's `training` section (the run's own values, secrets
    included in memory only), for pushes the training run makes. Without `hub_model_id` (which
    the recipe rules require with `push_to_hub`) the repository is named after the output
    folder, as the HF Trainer does."""
    repo = Path(output_dir).name if training.hub_model_id is None else training.hub_model_id
    token, source = _resolve_token(None, training.hub_token)
    return PushSettings(
        repo_id=repo,
        private=training.hub_private_repo,
        revision=training.hub_revision or None,  # "" is no branch
        token=token,
        token_source=source,
        hub_strategy=training.hub_strategy,
    )


def run_push_settings(
    training: TrainingConfig, output_dir: Path, endpoint: str | None = None
) -> PushSettings:
    """Where every push of a training run goes (each checkpoint and the final model): the
    `training` settings, with a bare `hub_model_id` resolved to the token owner's namespace."""
    return _full_repo_id(settings_from_training(training, output_dir), endpoint)


def _full_repo_id(settings: PushSettings, endpoint: str | None) -> PushSettings:
    """`hub_model_id` without a namespace means the token owner's (as the HF Trainer does)."""
    if "/" in settings.repo_id:
        return settings
    if not settings.token:
        return settings  # upload() reports the missing token
    from dataclasses import replace

    from huggingface_hub import HfApi

    try:
        user = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None).whoami(
            token=settings.token
        )["name"]
    except Exception as exc:
        raise _as_hub_error(
            exc,
            step="find the token's user name",
            repo_id=settings.repo_id,
            endpoint=endpoint or "the Hub",
            revision=None,
            token=settings.token,
        ) from None
    return replace(settings, repo_id=f"{user}/{settings.repo_id}")


def push_checkpoint(
    checkpoint_dir: Path, training: TrainingConfig, *, cpo_version: str, endpoint: str | None = None
) -> str | None:
    """At each save when `push_to_hub`: per `hub_strategy`, `every_save` mirrors the
    checkpoint's model files at the repo root, `checkpoint` also uploads the whole checkpoint as
    `last-checkpoint/`, `all_checkpoints` as `checkpoint-N/`; `end` pushes nothing here.

    A failed push mid-run is a warning, not the end of the run: the checkpoint is on disk and
    the final push will try again. Returns the commit URL, or None when nothing was pushed."""
    from cpo_cli import console

    if not training.push_to_hub or training.hub_strategy == "end":
        return None
    checkpoint_dir = Path(checkpoint_dir)
    try:
        settings = run_push_settings(training, checkpoint_dir.parent, endpoint)
        inputs = collect_card_inputs(checkpoint_dir, settings.repo_id)
        card = render_model_card(inputs, cpo_version=cpo_version)
        publishing = Publishing.of(
            checkpoint_dir, hub_base=inputs.base_model, output_dir=checkpoint_dir.parent
        )
        files = [
            publishing.file(p, p.name)
            for p in sorted(checkpoint_dir.iterdir())
            if p.is_file()
            and not _skipped(p.name)
            and p.name not in _NOT_MODEL_FILES
            and p.name != "README.md"
        ]
        if training.hub_strategy in ("checkpoint", "all_checkpoints"):
            folder = (
                "last-checkpoint" if training.hub_strategy == "checkpoint" else checkpoint_dir.name
            )
            for path in sorted(_walk_all(checkpoint_dir)):
                rel = path.relative_to(checkpoint_dir).as_posix()
                files.append(publishing.file(path, f"{folder}/{rel}"))
        files.append(UploadFile("README.md", len(card.encode()), content=card.encode()))
        plan = PushPlan(settings=settings, files=files, card=card)
        return upload(
            plan, endpoint=endpoint, commit_message=f"Training in progress, {checkpoint_dir.name}"
        )
    except HubError as err:
        console.warn(f"push of {checkpoint_dir.name} to the Hub failed: {err.message}")
        return None


def _walk_all(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        out += [Path(root) / n for n in names if not _skipped(n)]
    return out


def push_final(
    output_dir: Path, training: TrainingConfig, *, cpo_version: str, endpoint: str | None = None
) -> str | None:
    """At the end of a run when `push_to_hub` (what `cpo train` calls): the output folder as
    `cpo push` would upload it (model, tokenizer, recipe, card; checkpoints as `hub_strategy`
    says), to the repository the checkpoint pushes used. Raises `HubError`; the trained model
    is already saved locally, so nothing is lost. Returns the commit URL."""
    if not training.push_to_hub:
        return None
    settings = run_push_settings(training, output_dir, endpoint)
    plan = plan_push(Path(output_dir), settings, cpo_version=cpo_version)
    return upload(plan, endpoint=endpoint, commit_message="End of training")
