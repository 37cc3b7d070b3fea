"""Format detection and normalisation: any supported row shape -> one (prompt, chosen, rejected)
text triple, or a reason the row cannot be used.

Row problems are values (`RowProblem`), not crashes: the caller counts them by reason. Only a
problem with the whole dataset (no usable columns, no chat template) raises `DataError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from cpo_cli.errors import DataError
from cpo_cli.format_names import CANONICAL_COLUMNS, CanonicalColumn, RowFormat

ROLES = frozenset({"system", "user", "assistant", "tool"})

#: Why a row was dropped: the report's keys, in the order they are shown.
DROP_REASONS: dict[str, str] = {
    "missing_field": "a required field is missing or null",
    "empty_field": "a required field is empty or blank",
    "not_a_string": "a field or message content is not a string",
    "bad_message": "a message is not a {role, content} mapping",
    "wrong_role": "a message role is unknown or in the wrong place",
    "wrong_format": "the row does not have the shape of the requested format",
    "prompt_mismatch": "chosen and rejected conversations share no leading turns",
    "too_few_scored": "fewer than two candidates with a score",
    "tied_scores": "every scored candidate has the same score",
    "identical_answers": "chosen and rejected are identical",
    "prompt_boundary": "prompt tokens change by more than one when an answer follows",
    "too_long": "an answer is empty after truncation to max_length",
}


class RowProblem(Exception):
    """A row that cannot be used; `reason` is a key of `DROP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RowTexts:
    """One usable pair as text (chat template already applied)."""

    prompt: str
    chosen: str
    rejected: str
    kind: RowFormat


@dataclass(frozen=True)
class _Chat:
    """A checked conversational row waiting for the chat template."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    kind: RowFormat

    @property
    def continues_prompt(self) -> bool:
        return self.prompt[-1]["role"] == "assistant"


@dataclass
class ScoredStats:
    """What the scored-candidates builder had to decide, for the report."""

    ties_for_best: int = 0
    ties_for_worst: int = 0
    missing_scores: int = 0


def parse_columns(spec: str | None) -> dict[str, str]:
    """`"prompt=question,chosen=good"` -> `{"prompt": "question", "chosen": "good"}`."""
    mapping: dict[str, str] = {}
    if not spec:
        return mapping
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        canonical, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not canonical or not column:
            raise DataError(
                f"--columns: cannot read {item!r}",
                hint="write canonical=dataset_column pairs, e.g. prompt=question,chosen=good",
            )
        mapping[canonical] = column
    check_column_mapping(mapping)
    return mapping


def check_column_mapping(mapping: Mapping[str, str]) -> None:
    """A `--columns` mapping names only canonical columns (before it becomes a `DataSource`)."""
    unknown = sorted(set(mapping) - set(CANONICAL_COLUMNS))
    if unknown:
        raise DataError(
            f"columns: unknown canonical name(s) {', '.join(unknown)}",
            hint=f"the names a mapping may set are {', '.join(CANONICAL_COLUMNS)}",
        )


def rename_columns(
    columns: Sequence[str], mapping: Mapping[CanonicalColumn, str], source: str
) -> dict[str, str]:
    """Dataset column -> canonical name, checking every mapped column exists (the canonical
    names themselves are checked by the recipe's `DataSource`)."""
    missing = [f"{c}={d}" for c, d in mapping.items() if d not in columns]
    if missing:
        raise DataError(
            f"{source}: column mapping names column(s) not in the dataset: {', '.join(missing)}",
            hint=f"the dataset's columns are: {', '.join(columns) or '(none)'}",
        )
    renamed: dict[str, str] = {dataset_col: canonical for canonical, dataset_col in mapping.items()}
    for col in columns:
        if col not in renamed and col in CANONICAL_COLUMNS and col not in mapping:
            renamed[col] = col
    return renamed


def detect_format(columns: Sequence[str], sample: Sequence[Mapping[str, Any]], source: str) -> str:
    """The dataset's format from its canonical column names and the shape of a few rows."""
    cols = set(columns)
    if {"candidates", "scores"} <= cols:
        return "scored"
    if not {"chosen", "rejected"} <= cols:
        raise DataError(
            f"{source}: cannot tell the preference format from the columns {sorted(columns)}",
            hint=(
                "expected prompt/chosen/rejected, chosen/rejected conversations, or "
                "candidates/scores; rename yours with --columns prompt=question,chosen=good,..."
            ),
        )
    for row in sample:
        chosen = row.get("chosen")
        if isinstance(chosen, str):
            return "standard" if ("prompt" in cols or "messages" in cols) else "implicit"
        if isinstance(chosen, list):
            return "conversational" if ("prompt" in cols or "messages" in cols) else "implicit"
    return "standard"


class TextNormaliser:
    """Turns canonical rows into `RowTexts`, applying the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, fmt: str, source: str) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.source = source
        self.scored = ScoredStats()

    def __call__(self, row: Mapping[str, Any]) -> RowTexts:
        """One row (raises `RowProblem`); `many` is the fast path for whole datasets."""
        result = self.many([row])[0]
        if isinstance(result, RowProblem):
            raise result
        return result

    def many(self, rows: Sequence[Mapping[str, Any]]) -> list[RowTexts | RowProblem]:
        """Every row checked first, then all chat templates rendered in batched calls."""
        results: list[RowTexts | RowProblem | _Chat] = []
        for row in rows:
            try:
                results.append(self._check(row))
            except RowProblem as problem:
                results.append(problem)
        chats = [(i, r) for i, r in enumerate(results) if isinstance(r, _Chat)]
        if chats:
            rendered = self._render_chats([chat for _, chat in chats])
            for (i, _), texts in zip(chats, rendered, strict=True):
                results[i] = texts
        out: list[RowTexts | RowProblem] = []
        for r in results:
            assert not isinstance(r, _Chat)
            if isinstance(r, RowTexts) and r.chosen == r.rejected:
                r = RowProblem("identical_answers")
            out.append(r)
        return out

    def _check(self, row: Mapping[str, Any]) -> RowTexts | _Chat:
        kind_override: RowFormat | None = None
        if self.fmt == "scored":
            row = self._pair_from_scores(row)
            kind_override = "scored"
        prompt = row.get("prompt", row.get("messages"))
        chosen, rejected = row.get("chosen"), row.get("rejected")
        kind = self._row_kind(prompt, chosen, rejected, "prompt" in row or "messages" in row)
        if kind == "standard":
            return RowTexts(
                _text(prompt, "prompt"),
                _text(chosen, "chosen"),
                _text(rejected, "rejected"),
                kind_override or kind,
            )
        if kind == "implicit":
            prompt, chosen, rejected = _split_implicit(chosen, rejected)
        prompt_msgs = _messages(prompt, "prompt")
        chosen_msgs = _messages(chosen, "chosen", answer=True)
        rejected_msgs = _messages(rejected, "rejected", answer=True)
        last_role = prompt_msgs[-1]["role"]
        if last_role not in ("user", "tool", "assistant"):
            raise RowProblem("wrong_role", f"prompt ends with a {last_role} turn")
        if chosen_msgs == rejected_msgs:
            raise RowProblem("identical_answers")
        return _Chat(prompt_msgs, chosen_msgs, rejected_msgs, kind_override or kind)

    def _row_kind(self, prompt: Any, chosen: Any, rejected: Any, has_prompt: bool) -> RowFormat:
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if value is None:
                raise RowProblem("missing_field", name)
        if has_prompt and prompt is None:
            raise RowProblem("missing_field", "prompt")
        conversational = isinstance(chosen, list) or isinstance(prompt, list)
        if not has_prompt:
            if not isinstance(chosen, list) or not isinstance(rejected, list):
                raise RowProblem("missing_field", "prompt")
            kind: RowFormat = "implicit"
        else:
            kind = "conversational" if conversational else "standard"
        wanted = self.fmt
        if wanted in ("auto", "scored") or wanted == kind:
            return kind
        if wanted == "conversational" and kind == "implicit":
            return kind
        raise RowProblem("wrong_format", f"a {kind} row in a {wanted} dataset")

    def _render_chats(self, chats: Sequence[_Chat]) -> list[RowTexts | RowProblem]:
        """Prompt (with the generation prompt; a prompt ending with an assistant turn is
        continued instead, as in TRL), prompt + chosen and prompt + rejected, rendered as text.
        Some templates render the prompt differently once an answer follows (DeepSeek-R1's
        generation prompt): the prompt is the part all three renderings share, as in TRL."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                f"{self.source}: conversational rows need a chat template, and the tokenizer "
                f"{getattr(self.tokenizer, 'name_or_path', '')!r} has none",
                hint="set model.chat_template in the recipe or use a tokenizer that has one",
            )
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

    def _pair_from_scores(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Highest-scored candidate -> chosen, lowest -> rejected (first one wins a tie)."""
        candidates, scores = row.get("candidates"), row.get("scores")
        if candidates is None or scores is None:
            raise RowProblem("missing_field", "candidates" if candidates is None else "scores")
        if not isinstance(candidates, list) or not isinstance(scores, list):
            raise RowProblem("wrong_format", "candidates and scores must be lists")
        if len(candidates) != len(scores):
            raise RowProblem(
                "wrong_format", f"{len(candidates)} candidates but {len(scores)} scores"
            )
        scored: list[tuple[float, int]] = []
        for i, score in enumerate(scores):
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                self.scored.missing_scores += 1
                continue
            if candidates[i] is None:
                continue
            scored.append((float(score), i))
        if len(scored) < 2:
            raise RowProblem("too_few_scored")
        best = max(s for s, _ in scored)
        worst = min(s for s, _ in scored)
        if best == worst:
            raise RowProblem("tied_scores")
        best_idx = [i for s, i in scored if s == best]
        worst_idx = [i for s, i in scored if s == worst]
        self.scored.ties_for_best += len(best_idx) > 1
        self.scored.ties_for_worst += len(worst_idx) > 1
        out = {k: v for k, v in row.items() if k not in ("candidates", "scores")}
        out["chosen"] = candidates[best_idx[0]]
        out["rejected"] = candidates[worst_idx[0]]
        return out


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("not_a_string", f"{field} is {type(value).__name__}")
    if not value.strip():
        raise RowProblem("empty_field", field)
    return value


def _messages(value: Any, field: str, *, answer: bool = False) -> list[dict[str, str]]:
    """Checked `{role, content}` messages; a plain-string answer becomes one assistant turn."""
    if isinstance(value, str):
        if not answer:
            raise RowProblem("wrong_format", f"{field} is text in a conversational row")
        return [{"role": "assistant", "content": _text(value, field)}]
    if not isinstance(value, list):
        raise RowProblem("not_a_string", f"{field} is {type(value).__name__}")
    if not value:
        raise RowProblem("empty_field", field)
    out: list[dict[str, str]] = []
    for msg in value:
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowProblem("bad_message", f"{field} holds {type(msg).__name__}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise RowProblem("wrong_role", f"unknown role {role!r} in {field}")
        if not isinstance(content, str):
            raise RowProblem("not_a_string", f"{field} content is {type(content).__name__}")
        out.append({"role": role, "content": content})
    if answer:
        if out[0]["role"] != "assistant":
            raise RowProblem("wrong_role", f"{field} starts with a {out[0]['role']} turn")
        if not out[-1]["content"].strip():
            raise RowProblem("empty_field", field)
    return out


def _split_implicit(chosen: Any, rejected: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """Shared leading turns of two conversations -> (prompt, chosen answer, rejected answer)."""
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise RowProblem("wrong_format", "implicit rows hold two conversations")
    shared = sum(1 for _ in takewhile(lambda p: p[0] == p[1], zip(chosen, rejected, strict=False)))
    if shared == 0 or shared >= min(len(chosen), len(rejected)):
        if chosen == rejected:
            raise RowProblem("identical_answers")
        raise RowProblem("prompt_mismatch")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):  # the usual case, in C
        return a
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]
