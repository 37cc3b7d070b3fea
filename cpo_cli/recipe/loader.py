"""Loading a recipe in a fixed order: YAML -> `key=value` overrides -> interpolation resolved
(including `${oc.env:VAR}`) -> Pydantic validation -> cross-field rules and field status.
Every problem found on the way is collected and raised at once in one `RecipeError`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, Node, OmegaConf
from pydantic import ValidationError

from cpo_cli.errors import RecipeError, first_line
from cpo_cli.recipe.messages import format_validation_error
from cpo_cli.recipe.schema import Recipe
from cpo_cli.recipe.secrets import looks_secret, redact_text, redact_tokens

# `training.beta=0.2`, `data.train.columns.prompt=question`, `training.report_to=[wandb]`
_OVERRIDE = re.compile(r"^\+?([A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*)=(.*)$", re.S)
_NOT_A_MAPPING = "the recipe must be a mapping with the keys model, data, peft, training"
_ENV_VAR = re.compile(r"oc\.env:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")


class _Unresolved:
    """Stands in for a value whose interpolation failed (its error is already reported)."""

    def __repr__(self) -> str:
        return "<unresolved>"


_UNRESOLVED = _Unresolved()


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe, the warnings found while loading it, and where it came from."""

    recipe: Recipe
    warnings: list[str] = field(default_factory=list)
    source: str = "<recipe>"
    #: the command-line overrides applied, secrets already replaced by *** (safe to print)
    overrides: tuple[str, ...] = ()


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
    """Load, override, resolve and validate a recipe file; `RecipeError` lists every problem."""
    source = str(path)
    file = Path(path)
    if not file.is_file():
        why = "is a folder, not a recipe file" if file.is_dir() else "file not found"
        raise RecipeError(source, [f"{why}; pass the path of a .yaml recipe"])
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(source, [f"cannot read the file: {exc}"]) from None
    return load_recipe_text(text, overrides, source=source)


def load_recipe_text(
    text: str, overrides: Sequence[str] = (), *, source: str = "<recipe>"
) -> LoadedRecipe:
    """Like `load_recipe`, from YAML text."""
    import yaml

    try:
        shape = yaml.safe_load(text)  # only to refuse a scalar or list document up front
        if shape is not None and not isinstance(shape, dict):
            raise RecipeError(source, [_NOT_A_MAPPING])
        cfg = OmegaConf.create(text) if shape is not None else OmegaConf.create({})
    except RecipeError:
        raise
    except yaml.YAMLError as exc:
        raise RecipeError(source, [_yaml_problem(exc)]) from None
    except Exception as exc:  # OmegaConf wraps some YAML and key problems in its own errors
        raise RecipeError(source, [f"not a valid recipe: {first_line(exc)}"]) from None
    return _load_config(cfg, overrides, source)


def load_recipe_dict(
    data: Mapping[str, Any], overrides: Sequence[str] = (), *, source: str = "<dict>"
) -> LoadedRecipe:
    """Like `load_recipe`, from a nested mapping (tests, programmatic use)."""
    try:
        cfg = OmegaConf.create(dict(data))
    except Exception as exc:
        raise RecipeError(source, [f"not a valid recipe: {first_line(exc)}"]) from None
    return _load_config(cfg, overrides, source)


def _load_config(cfg: Any, overrides: Sequence[str], source: str) -> LoadedRecipe:
    if not isinstance(cfg, DictConfig):
        raise RecipeError(source, [_NOT_A_MAPPING])
    problems: list[str] = []
    cfg = _apply_overrides(cfg, overrides, problems)

    secret_paths: set[str] = set()
    unresolved: set[str] = set()
    data = _resolve(cfg, "", problems, secret_paths, unresolved)

    def hidden(path: str, value: Any) -> bool:
        return path in secret_paths or looks_secret(path.rsplit(".", 1)[-1])

    def skip(path: str) -> bool:
        return any(path == p or path.startswith((p + ".", p + "[")) for p in unresolved)

    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems.extend(format_validation_error(Recipe, exc, is_hidden=hidden, skip=skip))

    warnings: list[str] = []
    if recipe is not None and not problems:
        from cpo_cli.recipe.rules import check_rules
        from cpo_cli.recipe.status import check_field_status

        for check in (check_rules, check_field_status):
            errors, warns = check(recipe)
            problems.extend(errors)
            warnings.extend(warns)

    # An error line must never carry a secret, even one echoed inside another value.
    problems = [redact_text(p, data, secret_paths) for p in problems]
    if problems or recipe is None:
        raise RecipeError(source, problems or ["the recipe could not be validated"])
    recipe._secret_paths = frozenset(secret_paths)
    return LoadedRecipe(
        recipe=recipe,
        warnings=warnings,
        source=source,
        overrides=tuple(redact_text(_shown(o), data, secret_paths) for o in overrides),
    )


def _shown(override: str) -> str:
    """An override as it may be printed: `training.hub_token=***` for secret-looking keys, and
    token-shaped values hidden wherever they are."""
    key, sep, _ = override.partition("=")
    return f"{key}=***" if sep and looks_secret(key.rsplit(".", 1)[-1]) else redact_tokens(override)


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str], problems: list[str]) -> DictConfig:
    """Merge `key=value` overrides (OmegaConf dotlist syntax; the command line wins)."""
    good: list[str] = []
    for item in overrides:
        match = _OVERRIDE.match(item)
        if match is None:
            problems.append(
                f"override {_shown(item)!r}: expected key=value with a dotted key, "
                "e.g. training.beta=0.2 or model.name_or_path=/some/dir"
            )
            continue
        try:
            OmegaConf.from_dotlist([item.lstrip("+")])
        except Exception as exc:
            problems.append(
                f"override {_shown(item)!r}: cannot parse the value ({first_line(exc)})"
            )
            continue
        good.append(item.lstrip("+"))
    if not good:
        return cfg
    merged = cfg
    for item in good:
        one = OmegaConf.from_dotlist([item])
        try:
            merged = OmegaConf.merge(merged, one)  # type: ignore[assignment]
        except Exception as exc:
            # a list replacing a mapping (`data.train=[...]` over one source) or the reverse
            # cannot merge: the command line's value replaces the recipe's
            key = item.partition("=")[0]
            try:
                OmegaConf.update(merged, key, OmegaConf.select(one, key), merge=False)
            except Exception:
                problems.append(f"override {_shown(item)!r} cannot be applied: {first_line(exc)}")
                return cfg
    assert isinstance(merged, DictConfig)
    return merged


def _resolve(
    node: DictConfig | ListConfig,
    prefix: str,
    problems: list[str],
    secret_paths: set[str],
    unresolved: set[str],
) -> Any:
    """A plain container with every interpolation resolved; failures are reported per value, so
    one missing environment variable does not hide the other problems."""
    keys: list[Any] = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
    out_dict: dict[str, Any] = {}
    out_list: list[Any] = []
    for key in keys:
        path = (
            f"{prefix}[{key}]"
            if isinstance(node, ListConfig)
            else (f"{prefix}.{key}" if prefix else str(key))
        )
        child = node._get_node(key)
        is_interp = OmegaConf.is_interpolation(node, key)
        if is_interp:
            raw = str(child._value()) if isinstance(child, Node) else ""
            env_names = _ENV_VAR.findall(raw)
            leaf = str(key)
            if env_names and (looks_secret(leaf) or any(looks_secret(n) for n in env_names)):
                secret_paths.add(path)
        if isinstance(child, (DictConfig, ListConfig)) and not is_interp:
            value: Any = _resolve(child, path, problems, secret_paths, unresolved)
        else:
            try:
                value = node[key]
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=True)
            except Exception as exc:
                problems.append(f"{path}: {_interpolation_problem(exc)}")
                unresolved.add(path)
                value = _UNRESOLVED
        if isinstance(node, ListConfig):
            out_list.append(value)
        else:
            out_dict[str(key)] = value
    return out_list if isinstance(node, ListConfig) else out_dict


def _interpolation_problem(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "MissingMandatoryValue":
        return "value is missing (???); set it in the file or with an override"
    text = first_line(exc)
    env = re.search(r"Environment variable '([^']+)' not found", text)
    if env:
        return (
            f"environment variable {env.group(1)} is not set; export it or give a default, "
            f"e.g. ${{oc.env:{env.group(1)},default}}"
        )
    return f"cannot resolve the interpolation: {text}"


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc)
    if mark is not None:
        return f"not valid YAML: line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {problem}"
