"""haoranxu/ALMA-R-Preference, the CPO paper's data, read the way ALMA's own code reads it
(`utils/utils.py`, `preprocess_cpo_data`, in github.com/fe1ixxu/ALMA).

Each row has a `translation` struct for one language pair (`language_pair: "de-en"`): the two
sentences under their language codes (`de`, `en`: source and human reference), system outputs
`gpt4_{lang}` and `alma_{lang}`, and scores `{ref|gpt4|alma}_{lang}_{kiwi|xcomet|kiwi_xcomet}`.
For each requested direction src-tgt the candidates are the reference `tgt`, `gpt4_tgt` and
`alma_tgt`; the best-scored becomes chosen and the worst rejected (the first of equals, in that
order, as ALMA's `scores.index(max(scores))` picks). A non-zero `Delta` is a human judgement
between the two systems (> 0: gpt4 better) and overrides the scores. A row with
`required_directions` is used only in that direction. The prompt is ALMA's:
`Translate this from {Source} to {Target}:\\n{Source}: {sentence}\\n{Target}:`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cpo_cli.data.problems import UNREADABLE
from cpo_cli.data.rows import is_number
from cpo_cli.errors import DataError

#: Language names in ALMA's prompts (English names, as ALMA writes them).
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "cs": "Czech",
    "is": "Icelandic",
    "zh": "Chinese",
    "ru": "Russian",
    "ja": "Japanese",
    "uk": "Ukrainian",
    "ha": "Hausa",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "da": "Danish",
    "sv": "Swedish",
    "no": "Norwegian",
    "af": "Afrikaans",
    "ca": "Catalan",
    "ro": "Romanian",
    "gl": "Galician",
    "bg": "Bulgarian",
    "mk": "Macedonian",
    "sr": "Serbian",
    "pl": "Polish",
    "hu": "Hungarian",
    "el": "Greek",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "fi": "Finnish",
    "et": "Estonian",
    "id": "Indonesian",
    "ms": "Malay",
    "th": "Thai",
    "vi": "Vietnamese",
    "mg": "Malagasy",
    "ka": "Georgian",
    "ko": "Korean",
    "gu": "Gujarati",
    "hi": "Hindi",
    "mr": "Marathi",
    "ne": "Nepali",
    "ur": "Urdu",
    "az": "Azerbaijani",
    "kk": "Kazakh",
    "ky": "Kyrgyz",
    "tr": "Turkish",
    "uz": "Uzbek",
    "ar": "Arabic",
    "he": "Hebrew",
    "fa": "Persian",
}
#: The candidates, in ALMA's order (which decides ties): the reference, then the two systems.
SYSTEMS = ("ref", "gpt4", "alma")


def check_directions(directions: Sequence[str] | None, source: str) -> None:
    """Every language of every requested direction must have a name for the prompt."""
    unknown = sorted(
        {lang for d in directions or () for lang in d.split("-") if lang not in LANGUAGE_NAMES}
    )
    if unknown:
        raise DataError(
            f"{source}: directions: no language name for {', '.join(unknown)}",
            hint=f"use language codes as ALMA-R does: {', '.join(sorted(LANGUAGE_NAMES))}",
        )


def alma_prompt(source_lang: str, target_lang: str, sentence: str) -> str:
    src, tgt = LANGUAGE_NAMES[source_lang], LANGUAGE_NAMES[target_lang]
    return f"Translate this from {src} to {tgt}:\n{src}: {sentence}\n{tgt}:"


def expand_rows(
    rows: Sequence[Mapping[str, Any]], directions: Sequence[str] | None, scorer: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """One scored row per (row, requested direction): `{prompt, candidates, scores}`; a row
    that gives none is kept as an unreadable row with its reason. Also returns, per output row,
    the index of the input row it came from."""
    wanted = set(directions) if directions else None
    out: list[dict[str, Any]] = []
    origins: list[int] = []
    for index, row in enumerate(rows):
        for built in _pairs_of(row, wanted, scorer):
            out.append(built)
            origins.append(index)
    return out, origins


def _pairs_of(row: Mapping[str, Any], wanted: set[str] | None, scorer: str) -> list[dict[str, Any]]:
    if UNREADABLE in row:
        return [dict(row)]
    tr = row.get("translation")
    if not isinstance(tr, Mapping):
        reason = "missing_field" if tr is None else "wrong_format"
        what = "is missing" if tr is None else f"is {type(tr).__name__}, not a struct"
        return [_unreadable(reason, f"translation {what}")]
    pair = tr.get("language_pair")
    langs = pair.split("-") if isinstance(pair, str) else []
    if len(langs) != 2 or not all(langs):
        return [_unreadable("missing_field", "translation.language_pair is missing or not xx-yy")]
    a, b = langs
    required = tr.get("required_directions")
    required_target = required.split("-")[-1] if isinstance(required, str) and required else None
    out = []
    for src, tgt in ((a, b), (b, a)):
        if wanted is not None and f"{src}-{tgt}" not in wanted:
            continue
        if required_target is not None and tgt != required_target:
            continue
        if src not in LANGUAGE_NAMES or tgt not in LANGUAGE_NAMES:
            out.append(_unreadable("wrong_format", f"no language name for {src}-{tgt}"))
            continue
        sentence = tr.get(src)
        if not isinstance(sentence, str) or not sentence.strip():
            out.append(_unreadable("missing_field", "the source sentence is missing or empty"))
            continue
        out.append({"prompt": alma_prompt(src, tgt, sentence), **_candidates(tr, tgt, scorer)})
    if not out:
        return [_unreadable("other_direction", f"{pair} has no requested direction")]
    return out


def _candidates(tr: Mapping[str, Any], tgt: str, scorer: str) -> dict[str, list[Any]]:
    """The three candidates and their scores; a human `Delta` instead ranks gpt4 against alma."""
    delta = tr.get("Delta")
    gpt4, alma = tr.get(f"gpt4_{tgt}"), tr.get(f"alma_{tgt}")
    if isinstance(delta, (int, float)) and is_number(delta) and delta != 0:
        return {"candidates": [gpt4, alma], "scores": [float(delta), 0.0]}
    outputs = {"ref": tr.get(tgt), "gpt4": gpt4, "alma": alma}
    return {
        "candidates": [outputs[s] for s in SYSTEMS],
        "scores": [tr.get(f"{s}_{tgt}_{scorer}") for s in SYSTEMS],
    }


def _unreadable(reason: str, detail: str) -> dict[str, Any]:
    return {UNREADABLE: [reason, detail]}
