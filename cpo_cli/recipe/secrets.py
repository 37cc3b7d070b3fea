"""Secrets in recipes: `hub_token`, `push_to_hub_token`, any key that looks like a token, any
value taken from an environment variable whose name looks like one, and any value shaped like a
known API token (`hf_...`, `sk-...`, `ghp_...`, ...) whatever key it sits under (a mistyped
`hub_tokn`, a token pasted into the wrong field or onto the command line). They are replaced
before a recipe is printed, logged or written, and never appear in error messages."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

_SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "apikey", "key", "credential", "credentials", "auth"}
)


#: API tokens by their shape: Hugging Face (user and org), OpenAI/Anthropic, GitHub, AWS access
#: keys, Slack and Google. 40-hex-digit keys (wandb) are left out: git commit ids (a model's
#: `revision`) have the same shape, and those keys are found by their key name instead.
TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35})"
)


def redact_tokens(text: str) -> str:
    """`text` with every token-shaped substring replaced by `***`."""
    return TOKEN_SHAPES.sub(REDACTED, text)


def looks_secret(name: str) -> bool:
    """True for names such as `hub_token`, `HF_TOKEN`, `WANDB_API_KEY`, `db_password`."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w in _SECRET_WORDS for w in words)


def _walk_redact(
    value: Any, path: str, secret_paths: frozenset[str], secrets: tuple[str, ...]
) -> Any:
    leaf = path.rsplit(".", 1)[-1]
    if isinstance(value, Mapping):
        return {
            k: _walk_redact(v, f"{path}.{k}" if path else str(k), secret_paths, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk_redact(v, f"{path}[{i}]", secret_paths, secrets) for i, v in enumerate(value)]
    if isinstance(value, str):
        if path in secret_paths or looks_secret(leaf):
            return REDACTED
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return redact_tokens(value)
    if path in secret_paths and value is not None:
        return REDACTED
    return value


def _values_at(data: Any, paths: Iterable[str]) -> tuple[str, ...]:
    """The string values at secret paths (so copies of them elsewhere are hidden too)."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, str) and (path in wanted or looks_secret(path.rsplit(".", 1)[-1])):
            # replacing 1-3 character strings everywhere would garble the output
            found.extend([value] if len(value) >= 4 else [])

    wanted = frozenset(paths)
    walk(data, "")
    return tuple(sorted(set(found), key=len, reverse=True))


def redact_data(data: Any, secret_paths: Iterable[str] = ()) -> Any:
    """A copy of plain nested data (mappings, lists, scalars) with every secret replaced by
    `***`: values under secret-looking keys or at `secret_paths`, and copies of them elsewhere."""
    paths = frozenset(secret_paths)
    return _walk_redact(data, "", paths, _values_at(data, paths))


def redact_mapping(data: Mapping[str, Any], secret_paths: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of a plain nested mapping with every secret replaced by `***`."""
    return redact_data(data, secret_paths)  # type: ignore[no-any-return]


def redact_text(text: str, data: Mapping[str, Any], secret_paths: Iterable[str] = ()) -> str:
    """`text` with every secret value found in `data`, and every token-shaped string, replaced
    (for error messages)."""
    for secret in _values_at(data, secret_paths):
        text = text.replace(secret, REDACTED)
    return redact_tokens(text)
