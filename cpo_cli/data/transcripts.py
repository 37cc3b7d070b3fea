"""Anthropic/hh-rlhf's transcripts: `chosen` and `rejected` are whole dialogues written as
`\\n\\nHuman: ...\\n\\nAssistant: ...` text. They are split into turns at those markers, as TRL's
own conversion script (`examples/datasets/hh-rlhf-helpful-base.py`) splits them; the prompt is
every turn before the final assistant turn, and each answer is that final turn alone.

Unlike that script (which cuts at the last marker the two texts share), a pair whose dialogues
differ before their final assistant turn is dropped (`prompt_mismatch`) rather than turned into
an answer that holds several turns as one message.
"""

from __future__ import annotations

import re

from cpo_cli.data.problems import RowProblem

_MARKER = re.compile(r"\n\n(Human|Assistant): ")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def looks_like_transcript(value: object) -> bool:
    """Text holding both markers (hh-rlhf rows start with `\\n\\nHuman: `)."""
    return isinstance(value, str) and "\n\nHuman: " in value and "\n\nAssistant:" in value


def parse_transcript(text: str, field: str) -> list[dict[str, str]]:
    """The turns of one transcript as `{role, content}` messages."""
    if text.endswith("\n\nAssistant:"):  # a final answer left empty, without the space
        text += " "
    parts = _MARKER.split(text)
    if parts[0].strip():
        raise RowProblem("bad_transcript", f"{field} has text before its first Human: turn")
    return [
        {"role": _ROLES[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts) - 1, 2)
    ]


def split_transcripts(
    chosen: str, rejected: str
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """(prompt turns, [final chosen turn], [final rejected turn])."""
    turns = {}
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        parsed = parse_transcript(text, field)
        if not parsed or parsed[-1]["role"] != "assistant":
            raise RowProblem("bad_transcript", f"{field} does not end with an Assistant: turn")
        if len(parsed) < 2:
            raise RowProblem("bad_transcript", f"{field} has no turn before its final answer")
        turns[field] = parsed
    prompt = turns["chosen"][:-1]
    if prompt != turns["rejected"][:-1]:
        raise RowProblem("prompt_mismatch", "the transcripts differ before their final answer")
    return prompt, turns["chosen"][-1:], turns["rejected"][-1:]
