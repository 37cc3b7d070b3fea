"""What goes up, file by file, when `cpo push` (or a push during training) publishes a folder:
weights as they are; the recipe with its secrets redacted (`cpo_cli.recipe.secrets`) and its
local paths reduced; our JSON summaries by their path fields; every other text file searched
for the run's own absolute paths (`cpo_cli.public_paths`); a LoRA adapter's base named by its
Hub id. The local files are only read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from cpo_cli.errors import HubError
from cpo_cli.output_folder import find_recipe_file, read_recipe_dict
from cpo_cli.public_paths import (
    PathScrubber,
    is_hub_id,
    public_json_fields,
    public_name,
    public_recipe,
    run_roots,
)
from cpo_cli.recipe.secrets import redact_data

#: Text files whose contents are searched for the run's local paths (weights, optimizer state
#: and pickles are binary and left as they are).
_TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".jinja", ".csv")
#: JSON summaries and their fields that hold paths (reduced even when relative):
#: (fields always local, fields holding a Hub id or a local path).
_PATH_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train_results.json": (("best_checkpoint",), ()),
    "trainer_state.json": (("best_checkpoint",), ()),
    "eval_results.json": (("model", "generations"), ("dataset", "compare.model")),
}


@dataclass(frozen=True)
class UploadFile:
    """One file of the upload: a local file, or bytes we generated (card, redacted recipe)."""

    path_in_repo: str
    size: int
    source: Path | None = None
    content: bytes | None = None
    note: str = ""


@dataclass(frozen=True)
class Publishing:
    """How one run's files go up: secrets redacted, local paths reduced, the adapter's base
    named by its Hub id. The local files are only read."""

    scrubber: PathScrubber
    recipe_path: Path | None
    hub_base: str | None

    @classmethod
    def of(
        cls, folder: Path, *, hub_base: str | None = None, output_dir: Path | None = None
    ) -> Publishing:
        """For an output folder (or a checkpoint of `output_dir`): the local paths of its
        recipe, of the adapter's base model, of the folders themselves, cpo's cache, the
        working folder and the home folder."""
        recipe_path = find_recipe_file(folder)
        adapter_base = _adapter_base(folder / "adapter_config.json")
        recipe = read_recipe_dict(recipe_path)
        roots = run_roots(output_dir or folder, recipe, adapter_base, str(folder.resolve()))
        return cls(PathScrubber(roots, home=Path.home()), recipe_path, hub_base)

    def file(self, path: Path, path_in_repo: str, *, note: str = "") -> UploadFile:
        name = path.name
        if name in ("recipe.yaml", "recipe.yml") or path == self.recipe_path:
            text = self._public_recipe(path.read_text(encoding="utf-8"))
            return _generated(path_in_repo, text, "recipe, secrets redacted, local paths reduced")
        if name == "adapter_config.json":
            return self._adapter_config(path, path_in_repo)
        if name in _PATH_FIELDS or path.suffix.lower() in _TEXT_SUFFIXES:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return UploadFile(path_in_repo, len(raw), source=path, note=note)
            public = self.scrubber.scrub(_public_json(name, text))
            if public != text:
                return _generated(path_in_repo, public, note or "local paths reduced")
            return UploadFile(path_in_repo, len(raw), source=path, note=note)
        return UploadFile(path_in_repo, path.stat().st_size, source=path, note=note)

    def _public_recipe(self, text: str) -> str:
        text = redact_recipe_text(text)
        data = yaml.safe_load(text)  # parsed already by redact_recipe_text
        public = public_recipe(data)
        if public != data:
            text = yaml.safe_dump(public, sort_keys=False, allow_unicode=True)
        return self.scrubber.scrub(text)

    def _adapter_config(self, path: Path, path_in_repo: str) -> UploadFile:
        """LoRA adapters name their base by the local path they were trained on (e.g. the cache
        folder of a dequantised GGUF); the uploaded copy names the base's Hub id when the card
        knows it, else `name (local)`."""
        raw = path.read_bytes()
        try:
            config = json.loads(raw)
        except ValueError:
            return UploadFile(path_in_repo, len(raw), source=path)
        local_base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        note = ""
        if isinstance(local_base, str) and local_base and not is_hub_id(local_base):
            hub_base = self.hub_base if self.hub_base and is_hub_id(self.hub_base) else None
            config["base_model_name_or_path"] = hub_base or public_name(local_base)
            note = f"base model: {config['base_model_name_or_path']}"
        text = self.scrubber.scrub(json.dumps(config, indent=2) + "\n")
        if not note and self.scrubber.find(raw.decode("utf-8", "replace")) == []:
            return UploadFile(path_in_repo, len(raw), source=path)
        return _generated(path_in_repo, text, note or "local paths reduced")


def _generated(path_in_repo: str, text: str, note: str) -> UploadFile:
    content = text.encode()
    return UploadFile(path_in_repo, len(content), content=content, note=note)


def _public_json(name: str, text: str) -> str:
    """Our JSON summaries with their path fields reduced (other text as it is)."""
    if name not in _PATH_FIELDS:
        return text
    local, hub_or_local = _PATH_FIELDS[name]
    try:
        data = json.loads(text)
    except ValueError:
        return text
    public = public_json_fields(data, hub_or_local, local=local)
    return text if public == data else json.dumps(public, indent=2) + "\n"


def _adapter_base(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return str(base) if base else None


def redact_recipe_text(text: str) -> str:
    """The recipe YAML with every secret replaced as the recipe layer redacts it (defence in
    depth: the engine saves it redacted already); text without a secret is returned as it is.
    Unparseable text is refused rather than uploaded blind."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HubError(f"the saved recipe is not valid YAML ({exc.__class__.__name__})") from None
    cleaned = redact_data(data)
    return yaml.safe_dump(cleaned, sort_keys=False) if cleaned != data else text
