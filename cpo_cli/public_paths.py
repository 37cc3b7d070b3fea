"""How local paths look in anything `cpo push` publishes: a Hub id stays as it is, a local path
becomes its file name followed by " (local)". User names, home folders and the folder layout of
the training machine never leave it; the local files are not changed.

- `public_name` for one value (the model card, the model-index).
- `public_recipe` for the saved recipe: the fields that hold paths, then any absolute path
  anywhere in it.
- `public_json_fields` for the known path fields of our JSON summaries.
- `PathScrubber` for every other text file: each occurrence of the run's own absolute paths
  (output folder, model and data files, cpo's cache, the working folder, the home folder)
  becomes "name (local)", e.g. the base model folder in a PEFT-written README.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cpo_cli.recipe.choices import BUILTIN_PREFIX

LOCAL = "(local)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".gguf", ".yaml", ".yml"}
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")
#: characters that end a path inside text (quotes, whitespace, brackets, separators)
_PATH_TAIL = r"""(?:[/\\][^\s"'`<>|,;)\]}]*)?"""

#: recipe fields that always name something on this machine
_ALWAYS_LOCAL = {
    ("training", "output_dir"),
    ("training", "logging_dir"),
    ("training", "deepspeed"),
    ("training", "fsdp_config"),
    ("training", "accelerator_config"),
}
#: recipe fields that are a Hub id or a local path
_HUB_OR_LOCAL = {("model", "name_or_path"), ("model", "tokenizer_name_or_path")}
#: `resume_from_checkpoint` values that are not paths
_RESUME_KEYWORDS = {"last", "latest", "true", "false"}


def is_hub_id(name: str | None) -> bool:
    """True for `org/name` (or legacy `name`) Hub ids; False for local paths: absolute or
    relative paths that exist here, names with a data/model file suffix."""
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return False
    if Path(name).suffix.lower() in _FILE_SUFFIXES:
        return False
    return bool(_HUB_ID.match(name))


def local_label(value: str) -> str:
    """`/home/alice/data/train.jsonl` → `train.jsonl (local)` (a label stays as it is)."""
    if str(value).endswith(f" {LOCAL}"):
        return str(value)
    name = Path(str(value).rstrip("/\\").replace("\\", "/")).name or str(value)
    return f"{name} {LOCAL}"


def public_name(value: str | None) -> str | None:
    """A Hub id or cpo builtin name as it is; anything else (a local path) as `name (local)`."""
    if value is None or value == "":
        return value
    text = str(value)
    if is_hub_id(text) or text.startswith(BUILTIN_PREFIX) or text.endswith(LOCAL):
        return text
    return local_label(text)


def looks_absolute(value: str) -> bool:
    """`/…`, `~…`, `C:\\…` or `\\\\server\\…`: a path of this machine whatever the field."""
    return bool(_ABSOLUTE.match(value)) and len(value) > 1


def public_recipe(recipe: Any) -> Any:
    """A copy of a recipe (plain data) fit to publish: path fields reduced, Hub ids kept."""
    if not isinstance(recipe, Mapping):
        return recipe
    out = _reduce_absolute(recipe)
    for section, key in _HUB_OR_LOCAL | _ALWAYS_LOCAL:
        value = _get(out, section, key)
        if isinstance(value, str) and value:
            always = (section, key) in _ALWAYS_LOCAL
            _set(out, section, key, local_label(value) if always else public_name(value))
    template = _get(out, "model", "chat_template")
    if isinstance(template, str) and _is_template_path(template):
        _set(out, "model", "chat_template", local_label(template))
    resume = _get(out, "training", "resume_from_checkpoint")
    if isinstance(resume, str) and resume and resume.lower() not in _RESUME_KEYWORDS:
        _set(out, "training", "resume_from_checkpoint", local_label(resume))
    data = out.get("data")
    if isinstance(data, dict):
        for split, source in data.items():
            if isinstance(source, dict) and isinstance(source.get("path"), str):
                data[split] = {**source, "path": public_name(source["path"])}
    return out


def public_json_fields(data: Any, fields: Iterable[str] = (), *, local: Iterable[str] = ()) -> Any:
    """A copy of a JSON summary with its path fields reduced: dotted `fields` hold a Hub id or
    a local path, `local` fields always a local path. Any other absolute path is reduced too."""
    out = _reduce_absolute(data)
    for dotted, always in [*((f, False) for f in fields), *((f, True) for f in local)]:
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str) and node[last]:
            node[last] = local_label(node[last]) if always else public_name(node[last])
    return out


class PathScrubber:
    """Replaces, in any text, each occurrence of the given local paths (and anything below
    them) by `name (local)`. The home folder is matched only with something below it, so a
    short home such as `/root` never touches a vocabulary entry spelled the same."""

    def __init__(self, roots: Iterable[str | Path], *, home: str | Path | None = None) -> None:
        found: set[str] = set()
        for root in roots:
            for form in _forms(root):
                if form.count("/") >= 2 or (form.count("\\") >= 2):  # never `/` or `/tmp`
                    found.add(form)
        ordered = sorted(found, key=len, reverse=True)  # the longest (most specific) first
        patterns = [re.escape(r) + _PATH_TAIL for r in ordered]
        if home:
            for form in _forms(home):
                patterns.append(re.escape(form) + r"""[/\\][^\s"'`<>|,;)\]}]+""")
        self.roots = ordered
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def scrub(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: local_label(m.group(0)), text)

    def find(self, text: str) -> list[str]:
        """The local paths still present in `text` (for checks)."""
        return [] if self._pattern is None else self._pattern.findall(text)


def run_roots(output_dir: Path, recipe: Mapping[str, Any], *extra: str | None) -> list[str]:
    """The absolute paths a training run can have left in its files: the output folder, every
    local path of its recipe (resolved from here), cpo's cache and the working folder."""
    roots: list[str] = [str(Path(output_dir).expanduser().resolve()), str(Path.cwd())]
    cache = os.environ.get("CPO_CACHE")
    roots.append(cache if cache else str(Path.home() / ".cache" / "cpo"))
    for value in [*_strings(recipe), *extra]:
        if not value or value.startswith(BUILTIN_PREFIX) or "\n" in value:
            continue
        if looks_absolute(value):
            roots.append(value)
        candidate = Path(value).expanduser()
        if candidate.exists():
            roots.append(str(candidate.resolve()))
    return roots


# ----------------------------------------------------------------------------- helpers


def _forms(root: str | Path) -> set[str]:
    text = str(root).rstrip("/\\")
    forms = {text}
    with contextlib.suppress(OSError, RuntimeError):  # an unresolvable path: as given
        forms.add(str(Path(text).expanduser().resolve()))
    return {f for f in forms if f and looks_absolute(f) and not f.startswith("~")}


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def _reduce_absolute(obj: Any) -> Any:
    """A deep copy with every absolute-path string reduced to `name (local)`."""
    if isinstance(obj, str):
        return local_label(obj) if looks_absolute(obj) and "\n" not in obj else obj
    if isinstance(obj, Mapping):
        return {key: _reduce_absolute(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_reduce_absolute(value) for value in obj]
    return obj


def _is_template_path(value: str) -> bool:
    """A chat template given as a file (not inline Jinja)."""
    return "\n" not in value and "{{" not in value and "{%" not in value


def _get(data: Mapping[str, Any], section: str, key: str) -> Any:
    part = data.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def _set(data: dict[str, Any], section: str, key: str, value: Any) -> None:
    part = data.get(section)
    if isinstance(part, dict):
        part[key] = value
