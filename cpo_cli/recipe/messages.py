"""Pydantic's validation errors as one line per problem: the dotted path as the user types it,
the value given, what is allowed, and a "did you mean" for typos (keys and choices)."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from cpo_cli.recipe.secrets import REDACTED, redact_tokens


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `DataSource | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _is_union_tag(part: str) -> bool:
    """Pydantic inserts the union member it tried into `loc` (e.g. `list[str]`, `str`)."""
    return "[" in part or part in {"str", "int", "float", "bool", "none", "dict", "list"}


def split_loc(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[str, type[BaseModel] | None, bool]:
    """(dotted path, model owning the last key, whether the error is about a mapping key)."""
    path = ""
    model: type[BaseModel] | None = root
    owner: type[BaseModel] | None = root
    is_key = False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"  # an item of a list of models is that model (data.train[1])
            continue
        if part == "[key]":
            is_key = True
            continue
        if model is not None:
            if part == model.__name__:  # the union member tried, as in `DataSource | list[...]`
                continue
            if part in model.model_fields:
                owner = model
                path = f"{path}.{part}" if path else part
                model = _submodel(model.model_fields[part].annotation)
                continue
            if _is_union_tag(part):
                continue
            owner = model  # an unknown key of this model
            path = f"{path}.{part}" if path else part
            model = None
            continue
        if _is_union_tag(part):
            continue
        path = f"{path}.{part}" if path else part
    return path, owner, is_key


def all_field_paths(root: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted field path of the schema (`model.name_or_path`, `data.train.split`, ...)."""
    for name, field in root.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from all_field_paths(sub, path)


def show_value(value: Any, hidden: bool = False) -> str:
    """A short, YAML-like rendering of a value for an error line."""
    if hidden:
        return REDACTED
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = redact_tokens(repr(value) if isinstance(value, (dict, list, str)) else str(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _bound(ctx: dict[str, Any], key: str, sign: str) -> str:
    bound = ctx[key]
    return f"a value {sign} {bound:g}" if isinstance(bound, float) else f"a value {sign} {bound}"


_EXPECTED: dict[str, Callable[[dict[str, Any]], str]] = {
    "int_type": lambda c: "a whole number",
    "int_parsing": lambda c: "a whole number",
    "int_from_float": lambda c: "a whole number",
    "float_type": lambda c: "a number",
    "float_parsing": lambda c: "a number",
    "finite_number": lambda c: "a finite number",
    "bool_type": lambda c: "true or false",
    "bool_parsing": lambda c: "true or false",
    "string_type": lambda c: "a string",
    "string_too_short": lambda c: "a non-empty string",
    "dict_type": lambda c: "a mapping",
    "model_type": lambda c: "a mapping",
    "model_attributes_type": lambda c: "a mapping",
    "list_type": lambda c: "a list",
    "literal_error": lambda c: f"one of {c['expected']}",
    "greater_than": lambda c: _bound(c, "gt", ">"),
    "greater_than_equal": lambda c: _bound(c, "ge", ">="),
    "less_than": lambda c: _bound(c, "lt", "<"),
    "less_than_equal": lambda c: _bound(c, "le", "<="),
}


def _literal_options(ctx: dict[str, Any]) -> list[str]:
    return re.findall(r"'([^']*)'", str(ctx.get("expected", "")))


def _did_you_mean_value(value: Any, options: list[str]) -> str:
    if not isinstance(value, str) or not options:
        return ""
    lowered = value.lower()
    close = [o for o in options if o.lower() == lowered]
    # a prefix ("adamw" -> "adamw_torch") beats a fuzzy match ("grokadamw")
    close = close or [o for o in options if o.startswith(lowered)][:1]
    close = close or difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _did_you_mean_key(root: type[BaseModel], path: str, owner: type[BaseModel] | None) -> str:
    """A suggestion for an unknown key: the same name in another section, or a close name."""
    prefix, _, leaf = path.rpartition(".")
    every = list(all_field_paths(root))
    same_leaf = [p for p in every if p.rsplit(".", 1)[-1] == leaf and p != path]
    if same_leaf:
        return f"; did you mean '{same_leaf[0]}'?"
    if owner is not None:
        close = difflib.get_close_matches(leaf, list(owner.model_fields), n=1, cutoff=0.6)
        if close:
            return f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
        if len(owner.model_fields) <= 12:
            return "; allowed keys: " + ", ".join(owner.model_fields)
    leaves = {p.rsplit(".", 1)[-1]: p for p in every}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
    return f"; did you mean '{leaves[close[0]]}'?" if close else ""


def format_validation_error(
    root: type[BaseModel],
    exc: ValidationError,
    *,
    is_hidden: Callable[[str, Any], bool] = lambda path, value: False,
    skip: Callable[[str], bool] = lambda path: False,
) -> list[str]:
    """One line per problem. Errors a union produces for one value (one per member) are merged."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, tuple[type[BaseModel] | None, bool]] = {}
    for err in exc.errors(include_url=False):
        path, owner, is_key = split_loc(root, tuple(err["loc"]))
        if skip(path):
            continue
        key = path + ("[key]" if is_key else "")
        grouped.setdefault(key, []).append(dict(err))  # type: ignore[arg-type]
        meta[key] = (owner, is_key)

    # A union member that got further (e.g. the list member, failing on one item) explains the
    # problem better than the members that rejected the whole value.
    deeper = {k for k in grouped if any(o.startswith((k + ".", k + "[")) for o in grouped)}
    lines: list[str] = []
    for key, errs in grouped.items():
        if key in deeper:
            continue
        owner, is_key = meta[key]
        path = key.removesuffix("[key]")
        first = errs[0]
        value = first.get("input")
        shown = show_value(value, is_hidden(path, value))
        if first["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (got {shown}){_did_you_mean_key(root, path, owner)}")
            continue
        if first["type"] == "missing":
            lines.append(f"{path}: required but missing")
            continue
        expected: list[str] = []
        hint = ""
        for item in errs:
            ctx = dict(item.get("ctx") or {})
            make = _EXPECTED.get(item["type"])
            text = make(ctx) if make else str(item["msg"]).removeprefix("Value error, ")
            if text not in expected:
                expected.append(text)
            if item["type"] == "literal_error" and not hint:
                hint = _did_you_mean_value(item.get("input"), _literal_options(ctx))
        allowed = " or ".join(expected)
        if is_key:
            lines.append(f"{path}: unknown key {shown}; expected {allowed}{hint}")
        else:
            lines.append(f"{path}: got {shown}; expected {allowed}{hint}")
    return lines
