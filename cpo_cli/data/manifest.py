"""`manifest.json` beside a prepared dataset: where it came from and what it was tokenised with,
so a later run refuses it when the tokenizer or the lengths differ (naming what differs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cpo_cli.errors import DataError

MANIFEST_NAME = "manifest.json"
#: Bumped whenever the prepared columns or their meaning change; older folders are refused.
FORMAT_VERSION = 1
#: Length settings that must agree between a prepared folder and the run using it.
CHECKED_SETTINGS = (
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "truncation_mode",
    "is_encoder_decoder",
)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Name plus a hash of everything that decides token ids: the vocabulary and merges (the
    whole backend when the tokenizer is a fast one), special tokens and the chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items())).encode("utf-8"))
    # The pad token is left out: it never appears in prepared ids, and trainers set it freely.
    specials = {
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
        "added": sorted(str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()),
    }
    h.update(json.dumps(specials, sort_keys=True).encode("utf-8"))
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = json.dumps(template, sort_keys=True)
    template_hash = hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
    h.update(template_hash.encode("ascii"))
    return {
        "name": str(getattr(tokenizer, "name_or_path", "") or ""),
        "fingerprint": h.hexdigest()[:32],
        "chat_template": template_hash if template else None,
        "vocab_size": len(tokenizer),
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8"
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{folder} is not a prepared dataset (no {MANIFEST_NAME})",
            hint="create one with `cpo prepare`, or point at the raw data instead",
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}); prepare the data again") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{folder} was prepared in format version {version}; this cpo reads version "
            f"{FORMAT_VERSION}",
            hint="prepare the data again with this version of cpo",
        )
    return manifest


def mismatches(
    manifest: dict[str, Any], tokenizer_info: dict[str, Any], settings: dict[str, Any]
) -> list[str]:
    """Every way the prepared folder differs from the run: one readable line each."""
    problems = []
    prepared_tok = manifest.get("tokenizer", {})
    if prepared_tok.get("fingerprint") != tokenizer_info["fingerprint"]:
        what = (
            "chat template" if _only_template_differs(prepared_tok, tokenizer_info) else "tokenizer"
        )
        problems.append(
            f"{what}: prepared with {prepared_tok.get('name')!r} "
            f"(fingerprint {prepared_tok.get('fingerprint')}), this run uses "
            f"{tokenizer_info['name']!r} (fingerprint {tokenizer_info['fingerprint']})"
        )
    prepared_settings = manifest.get("settings", {})
    for key in CHECKED_SETTINGS:
        if key == "max_completion_length" and not settings.get("is_encoder_decoder"):
            continue  # only encoder-decoder tokenisation reads it
        if prepared_settings.get(key) != settings.get(key):
            problems.append(
                f"{key}: prepared with {prepared_settings.get(key)!r}, "
                f"this run uses {settings.get(key)!r}"
            )
    return problems


def _only_template_differs(prepared: dict[str, Any], current: dict[str, Any]) -> bool:
    return (
        prepared.get("chat_template") != current.get("chat_template")
        and prepared.get("vocab_size") == current.get("vocab_size")
        and prepared.get("name") == current.get("name")
    )
