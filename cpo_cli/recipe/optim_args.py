"""`training.optim_args`, HF's `k=v,k=v` string of extra optimizer arguments, as typed keyword
arguments. Parsed when the recipe loads (a bad string is a recipe problem, reported with the
others before any model loads) and again by the engine, which then cannot fail."""

from __future__ import annotations

from typing import Any


def parse_optim_args(text: str | None) -> dict[str, Any]:
    """`"momentum=0.9,nesterov=True"` -> `{"momentum": 0.9, "nesterov": True}` (bools, ints and
    floats typed, anything else a string). ValueError names the item that is not key=value."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(
                "key=value pairs, e.g. 'momentum=0.9,nesterov=True' "
                f"({item.strip()!r} is not key=value)"
            )
        out[key] = _typed(raw)
    return out


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
