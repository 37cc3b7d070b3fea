"""Format detection and normalisation: canonical rows of any supported shape -> one (prompt,
chosen, rejected) text triple each, with the chat template applied, or a reason the row cannot
be used.

Row problems are values (`RowProblem`), not crashes: the caller counts them by reason. Only a
problem with the whole dataset (no usable columns, no chat template) raises `DataError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cpo_cli.data.columns import guess_column
from cpo_cli.data.problems import RowProblem
from cpo_cli.data.rows import Chat, ChoiceStats, Plain, RowOptions, RowReader
from cpo_cli.errors import DataError
from cpo_cli.format_names import RAW_DATA_FORMATS

#: Row formats a raw source may have (`prepared` is a folder, not a row format).
FORMATS: tuple[str, ...] = RAW_DATA_FORMATS
#: Formats that turn each row into chosen/rejected before reading it (not per-row shapes).
BUILDING_FORMATS = ("scored", "pairwise", "alma_r")

#: One usable pair as text (chat template already applied).
RowTexts = Plain


def detect_format(
    canonical: Sequence[str],
    sample: Sequence[Mapping[str, Any]],
    source: str,
    dataset_columns: Sequence[str],
    raw_sample: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The dataset's format from its canonical columns and the shape of a few (canonical)
    rows; an error names the dataset's own columns and a likely `--columns` mapping (read from
    the raw rows when they nest candidates and scores)."""
    cols = set(canonical)
    if "translation" in cols and any(
        isinstance(r.get("translation"), Mapping) and "language_pair" in r["translation"]
        for r in sample
    ):
        return "alma_r"
    if {"candidates", "scores"} <= cols:
        return "scored"
    if {"response_a", "response_b", "preference"} <= cols:
        return "pairwise"
    if not {"chosen", "rejected"} <= cols:
        raise DataError(
            f"{source}: cannot tell the preference format from the columns "
            f"{', '.join(dataset_columns) or '(none)'}",
            hint=suggest_nested_scores(raw_sample) or suggest_columns(dataset_columns),
        )
    has_prompt = "prompt" in cols or "messages" in cols
    for row in sample:
        chosen = row.get("chosen")
        if isinstance(chosen, str):
            return "standard" if has_prompt else "implicit"
        if isinstance(chosen, list):
            return "conversational" if has_prompt else "implicit"
    return "standard"


_TEXT_KEYS = ("response", "completion", "output", "text", "answer", "content", "generation")
_SCORE_KEYS = ("overall_score", "score", "rating", "reward", "fine-grained_score")


def suggest_nested_scores(raw_sample: Sequence[Mapping[str, Any]]) -> str | None:
    """`--format scored --columns candidates=C.text,scores=C.score` for a column holding a list
    of structs with a text field and a numeric score (openbmb/UltraFeedback's `completions`)."""
    for row in raw_sample[:5]:
        for column, value in row.items():
            items = [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
            if not items:
                continue
            first = items[0]
            text = next((k for k in _TEXT_KEYS if isinstance(first.get(k), str)), None)
            score = next((k for k in _SCORE_KEYS if isinstance(first.get(k), (int, float))), None)
            if text and score:
                return (
                    f"{column!r} holds scored candidates: --columns "
                    f"candidates={column}.{text},scores={column}.{score}"
                )
    return None


def suggest_columns(dataset_columns: Sequence[str]) -> str:
    """A `--columns` mapping built from column names that look like the canonical ones."""
    guess: dict[str, str] = {}
    for canonical in ("prompt", "chosen", "rejected"):
        found = guess_column(canonical, dataset_columns, exclude=guess.values())
        if found is not None:
            guess[canonical] = found
    if {"chosen", "rejected"} <= set(guess):
        mapping = ",".join(f"{k}={v}" for k, v in guess.items())
        return f"map the columns, e.g. --columns {mapping}"
    return (
        "name the columns with --columns prompt=COL,chosen=COL,rejected=COL; or choose a format "
        "that builds pairs: --format scored (--columns candidates=COL,scores=COL), "
        "--format pairwise (--columns response_a=COL,response_b=COL,preference=COL), "
        "--format alma_r"
    )


class TextNormaliser:
    """Turns canonical rows into `RowTexts`, applying the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, options: RowOptions, source: str) -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.reader = RowReader(options)

    @property
    def scored(self) -> ChoiceStats:
        return self.reader.stats

    def __call__(self, row: Mapping[str, Any]) -> RowTexts:
        """One row (raises `RowProblem`); `many` is the fast path for whole datasets."""
        result = self.many([row])[0]
        if isinstance(result, RowProblem):
            raise result
        return result

    def many(self, rows: Sequence[Mapping[str, Any]]) -> list[RowTexts | RowProblem]:
        """Every row checked first, then all chat templates rendered in batched calls."""
        results: list[Plain | Chat | RowProblem] = []
        for row in rows:
            try:
                results.append(self.reader(row))
            except RowProblem as problem:
                results.append(problem)
        chats = [(i, r) for i, r in enumerate(results) if isinstance(r, Chat)]
        if chats:
            rendered = self._render_chats([chat for _, chat in chats])
            for (i, _), texts in zip(chats, rendered, strict=True):
                results[i] = texts
        out: list[RowTexts | RowProblem] = []
        for r in results:
            assert not isinstance(r, Chat)
            if isinstance(r, Plain) and r.chosen == r.rejected:
                r = RowProblem("identical_answers")
            out.append(r)
        return out

    def _render_chats(self, chats: Sequence[Chat]) -> list[RowTexts | RowProblem]:
        """Prompt (with the generation prompt; a prompt ending with an assistant turn is
        continued instead, as in TRL), prompt + chosen and prompt + rejected, rendered as text.
        Some templates render the prompt differently once an answer follows (DeepSeek-R1's
        generation prompt): the prompt is the part all three renderings share, as in TRL."""
        require_chat_template(self.tokenizer, self.source)
        prompts: list[str | RowProblem] = [""] * len(chats)
        for continued in (False, True):
            idx = [i for i, c in enumerate(chats) if c.continues_prompt == continued]
            texts = self._render_batch(
                [chats[i].prompt for i in idx],
                add_generation_prompt=not continued,
                continue_final_message=continued,
            )
            for i, text in zip(idx, texts, strict=True):
                prompts[i] = text
        fulls_c = self._render_batch([c.prompt + c.chosen for c in chats])
        fulls_r = self._render_batch([c.prompt + c.rejected for c in chats])
        out: list[RowTexts | RowProblem] = []
        for chat, prompt, full_c, full_r in zip(chats, prompts, fulls_c, fulls_r, strict=True):
            problem = next((x for x in (prompt, full_c, full_r) if isinstance(x, RowProblem)), None)
            if problem is not None:
                out.append(problem)
                continue
            assert isinstance(prompt, str) and isinstance(full_c, str) and isinstance(full_r, str)
            shared = _common_prefix(_common_prefix(prompt, full_c), full_r)
            out.append(RowTexts(shared, full_c[len(shared) :], full_r[len(shared) :], chat.kind))
        return out

    def _render_batch(
        self,
        conversations: list[list[dict[str, str]]],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> list[str | RowProblem]:
        """One templating call for many conversations; if the template refuses one of them
        (jinja `raise_exception`, e.g. on a role order), each is rendered alone to find it."""
        if not conversations:
            return []
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if continue_final_message:
            kwargs["continue_final_message"] = True
        try:
            texts = self.tokenizer.apply_chat_template(conversations, **kwargs)
        except Exception:
            return [self._render_one(c, kwargs) for c in conversations]
        return [str(t) for t in texts]

    def _render_one(
        self, conversation: list[dict[str, str]], kwargs: dict[str, Any]
    ) -> str | RowProblem:
        try:
            return str(self.tokenizer.apply_chat_template(conversation, **kwargs))
        except Exception as exc:  # a template may reject a role order (jinja raise_exception)
            return RowProblem("wrong_role", f"the chat template refused the row: {exc}")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer: Any, source: str) -> None:
    if not has_chat_template(tokenizer):
        raise DataError(
            f"{source}: conversational rows need a chat template, and the tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')!r} has none",
            hint="set model.chat_template in the recipe, use a tokenizer that has one, or "
            "(for text rows) chat_template: never",
        )


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):  # the usual case, in C
        return a
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]
