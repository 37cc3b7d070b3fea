"""One canonical row -> one checked pair, as text (`Plain`) or as messages waiting for the chat
template (`Chat`), or a `RowProblem` saying why not. No tokenizer here: pure functions.

How each shape is read (TRL 1.16's `maybe_extract_prompt` where TRL reads the shape):
- prompt text + answer texts: a standard pair, used as text, or as a conversation when the
  source renders text rows with the chat template (`text_as_chat`);
- prompt messages (or `messages`) + answers: conversational; a text answer is one assistant turn;
- prompt text + answer conversations that repeat the prompt's turns (HuggingFaceH4's
  UltraFeedback, princeton-nlp's *-armorm): the shared leading turns are the prompt and the
  text prompt is set aside, as `maybe_extract_prompt` does; answer conversations that do not
  repeat it (assistant turns only) get the text prompt as the user turn;
- no prompt: conversations sharing their leading turns (implicit prompt); Human:/Assistant:
  transcripts (hh-rlhf); under `format: implicit`, texts split at their common prefix as
  TRL's `extract_prompt` splits them;
- `system`: the first turn of the prompt (joined before a text prompt when not templated);
- scored candidates and pairwise preferences are first turned into chosen/rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from cpo_cli.data.problems import UNREADABLE, RowProblem
from cpo_cli.data.transcripts import looks_like_transcript, split_transcripts
from cpo_cli.format_names import RowFormat as RowKind

ROLES = frozenset({"system", "user", "assistant", "tool"})
#: How a system prompt is joined before a text prompt that is not templated.
SYSTEM_SEPARATOR = "\n\n"

Message = dict[str, str]


@dataclass(frozen=True)
class Plain:
    """A pair used as text."""

    prompt: str
    chosen: str
    rejected: str
    kind: RowKind


@dataclass(frozen=True)
class Chat:
    """A pair of conversations waiting for the chat template."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    kind: RowKind

    @property
    def continues_prompt(self) -> bool:
        return self.prompt[-1]["role"] == "assistant"


@dataclass(frozen=True)
class RowOptions:
    """How one source's rows are read."""

    fmt: str = "auto"
    #: render text rows as conversations (user turn + assistant answers) with the template
    text_as_chat: bool = False


@dataclass
class ChoiceStats:
    """What the scored-candidates builder had to decide, for the report."""

    ties_for_best: int = 0
    ties_for_worst: int = 0
    missing_scores: int = 0


@dataclass
class RowReader:
    """Reads canonical rows under one source's options, counting scored-candidate decisions."""

    options: RowOptions = field(default_factory=RowOptions)
    stats: ChoiceStats = field(default_factory=ChoiceStats)

    def __call__(self, row: Mapping[str, Any]) -> Plain | Chat:
        if UNREADABLE in row:
            reason, detail = row[UNREADABLE]
            raise RowProblem(reason, detail)
        fmt = self.options.fmt
        kind: RowKind | None = None
        if fmt in ("scored", "alma_r"):
            row = pair_from_scores(row, self.stats)
            kind = "alma_r" if fmt == "alma_r" else "scored"
        elif fmt == "pairwise":
            row = pair_from_preference(row)
            kind = "pairwise"
        pair = self._read(row)
        if kind is None:
            _check_wanted(fmt, pair.kind)
            return pair
        if isinstance(pair, Plain):
            return Plain(pair.prompt, pair.chosen, pair.rejected, kind)
        return Chat(pair.prompt, pair.chosen, pair.rejected, kind)

    def _read(self, row: Mapping[str, Any]) -> Plain | Chat:
        chosen, rejected = row.get("chosen"), row.get("rejected")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if value is None:
                raise RowProblem("missing_field", name)
        system = _system(row.get("system"))
        has_prompt = "prompt" in row or "messages" in row
        prompt = row["prompt"] if "prompt" in row else row.get("messages")
        if has_prompt and prompt is None:
            raise RowProblem("missing_field", "prompt")
        if not has_prompt:
            pair = self._implicit(chosen, rejected)
        elif isinstance(prompt, list):
            pair = _chat(prompt, chosen, rejected, "conversational")
        elif not isinstance(prompt, str):
            raise RowProblem("not_a_string", f"prompt is {type(prompt).__name__}")
        elif isinstance(chosen, list) or isinstance(rejected, list):
            pair = _text_prompt_conversation(prompt, chosen, rejected)
        elif self.options.text_as_chat:
            user = [{"role": "user", "content": _text(prompt, "prompt")}]
            pair = _chat(user, chosen, rejected, "standard")
        else:
            text = _text(prompt, "prompt")
            if system is not None:
                text = system + SYSTEM_SEPARATOR + text
            return Plain(text, _text(chosen, "chosen"), _text(rejected, "rejected"), "standard")
        if isinstance(pair, Chat) and system is not None and pair.prompt[0]["role"] != "system":
            pair = Chat([{"role": "system", "content": system}, *pair.prompt], *_answers(pair))
        return pair

    def _implicit(self, chosen: Any, rejected: Any) -> Plain | Chat:
        if isinstance(chosen, list) and isinstance(rejected, list):
            prompt, c, r = _split_conversations(chosen, rejected)
            return _chat(prompt, c, r, "implicit")
        if looks_like_transcript(chosen) and looks_like_transcript(rejected):
            prompt, c, r = split_transcripts(chosen, rejected)
            return _chat(prompt, c, r, "implicit")
        if isinstance(chosen, str) and isinstance(rejected, str) and self.options.fmt == "implicit":
            return _split_texts(chosen, rejected)
        raise RowProblem(
            "missing_field", "prompt (no prompt column, and the answers are not conversations)"
        )


def _answers(pair: Chat) -> tuple[list[Message], list[Message], RowKind]:
    return pair.chosen, pair.rejected, pair.kind


def _check_wanted(fmt: str, kind: RowKind) -> None:
    """A requested format is enforced per row (`auto` reads each row by its shape)."""
    if fmt in ("auto", kind) or (fmt == "conversational" and kind == "implicit"):
        return
    raise RowProblem("wrong_format", f"a {kind} row in a {fmt} dataset")


def _chat(prompt: Any, chosen: Any, rejected: Any, kind: RowKind) -> Chat:
    prompt_msgs = _messages(prompt, "prompt")
    chosen_msgs = _messages(chosen, "chosen", answer=True)
    rejected_msgs = _messages(rejected, "rejected", answer=True)
    last_role = prompt_msgs[-1]["role"]
    if last_role not in ("user", "tool", "assistant"):
        raise RowProblem("wrong_role", f"prompt ends with a {last_role} turn")
    if chosen_msgs == rejected_msgs:
        raise RowProblem("identical_answers")
    return Chat(prompt_msgs, chosen_msgs, rejected_msgs, kind)


def _text_prompt_conversation(prompt: str, chosen: Any, rejected: Any) -> Chat:
    """A text prompt beside answer conversations. When the answers repeat the prompt's turns,
    those shared turns are the prompt (TRL's `maybe_extract_prompt`); when they hold assistant
    turns only, the text prompt is the user turn."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RowProblem("wrong_format", "one answer is text and the other a conversation")
    if not chosen or not rejected:
        raise RowProblem("empty_field", "chosen" if not chosen else "rejected")
    first = chosen[0]
    if isinstance(first, dict) and first.get("role") != "assistant":
        shared, c, r = _split_conversations(chosen, rejected)
        return _chat(shared, c, r, "conversational")
    return _chat(
        [{"role": "user", "content": _text(prompt, "prompt")}], chosen, rejected, "conversational"
    )


def _system(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowProblem("not_a_string", f"system is {type(value).__name__}")
    return value if value.strip() else None


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("not_a_string", f"{field} is {type(value).__name__}")
    if not value.strip():
        raise RowProblem("empty_field", field)
    return value


def _messages(value: Any, field: str, *, answer: bool = False) -> list[Message]:
    """Checked `{role, content}` messages; a plain-string answer becomes one assistant turn."""
    if isinstance(value, str):
        if not answer:
            raise RowProblem("wrong_format", f"{field} is text in a conversational row")
        return [{"role": "assistant", "content": _text(value, field)}]
    if not isinstance(value, list):
        raise RowProblem("not_a_string", f"{field} is {type(value).__name__}")
    if not value:
        raise RowProblem("empty_field", field)
    out: list[Message] = []
    for msg in value:
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowProblem("bad_message", f"{field} holds {type(msg).__name__}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise RowProblem("wrong_role", f"unknown role in {field}")
        if not isinstance(content, str):
            raise RowProblem("not_a_string", f"{field} content is {type(content).__name__}")
        out.append({"role": role, "content": content})
    if answer:
        if out[0]["role"] != "assistant":
            raise RowProblem("wrong_role", f"{field} starts with a {out[0]['role']} turn")
        if not out[-1]["content"].strip():
            raise RowProblem("empty_field", field)
    return out


def _split_conversations(chosen: Any, rejected: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """Shared leading turns of two conversations -> (prompt, chosen answer, rejected answer)."""
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise RowProblem("wrong_format", "implicit rows hold two conversations")
    shared = sum(1 for _ in takewhile(lambda p: p[0] == p[1], zip(chosen, rejected, strict=False)))
    if shared == 0 or shared >= min(len(chosen), len(rejected)):
        if chosen == rejected:
            raise RowProblem("identical_answers")
        raise RowProblem("prompt_mismatch", "the conversations share no leading turns")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _split_texts(chosen: str, rejected: str) -> Plain:
    """TRL's `extract_prompt` on text: the prompt is the common prefix, cut before a space that
    ends it (the space starts the answers). A pair with no common prefix, or where one text is
    the start of the other, has no prompt to extract and is dropped (TRL would cut oddly)."""
    limit = min(len(chosen), len(rejected))
    idx = next((i for i in range(limit) if chosen[i] != rejected[i]), None)
    if chosen == rejected:
        raise RowProblem("identical_answers")
    if not idx:
        raise RowProblem("prompt_mismatch", "the texts share no common start")
    if chosen[idx - 1] == " ":
        idx -= 1
    prompt = chosen[:idx]
    if not prompt.strip():
        raise RowProblem("prompt_mismatch", "the texts share no common start")
    return Plain(prompt, chosen[idx:], rejected[idx:], "implicit")


def pair_from_scores(row: Mapping[str, Any], stats: ChoiceStats) -> dict[str, Any]:
    """Highest-scored candidate -> chosen, lowest -> rejected (the first of equals wins)."""
    candidates, scores = row.get("candidates"), row.get("scores")
    if candidates is None or scores is None:
        raise RowProblem("missing_field", "candidates" if candidates is None else "scores")
    if not isinstance(candidates, list) or not isinstance(scores, list):
        raise RowProblem("wrong_format", "candidates and scores must be lists")
    if len(candidates) != len(scores):
        raise RowProblem("wrong_format", "candidates and scores differ in length")
    scored: list[tuple[float, int]] = []
    for i, score in enumerate(scores):
        if not is_number(score):
            stats.missing_scores += 1
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
    stats.ties_for_best += len(best_idx) > 1
    stats.ties_for_worst += len(worst_idx) > 1
    out = {k: v for k, v in row.items() if k not in ("candidates", "scores")}
    out["chosen"] = candidates[best_idx[0]]
    out["rejected"] = candidates[worst_idx[0]]
    return out


def pair_from_preference(row: Mapping[str, Any]) -> dict[str, Any]:
    """response_a/response_b and a signed preference: below 0 a is better, above 0 b is better,
    0 is a tie (dropped)."""
    for name in ("response_a", "response_b", "preference"):
        if row.get(name) is None:
            raise RowProblem("missing_field", name)
    preference = row["preference"]
    if not is_number(preference):
        raise RowProblem("wrong_format", f"preference is {type(preference).__name__}, not a number")
    if preference == 0:
        raise RowProblem("tie")
    a, b = row["response_a"], row["response_b"]
    out = {k: v for k, v in row.items() if k not in ("response_a", "response_b", "preference")}
    out["chosen"], out["rejected"] = (a, b) if preference < 0 else (b, a)
    return out


def is_number(value: Any) -> bool:
    """A real number (not a bool, not NaN): what a score or a preference must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
