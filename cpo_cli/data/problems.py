"""Why a row is dropped: the reasons the report counts, and the `RowProblem` value that carries
one (with a short detail that names the field but no row-specific text, so details group)."""

from __future__ import annotations

#: Why a row was dropped: the report's keys, in the order they are shown.
DROP_REASONS: dict[str, str] = {
    "bad_encoding": "the row's bytes are not valid UTF-8",
    "missing_field": "a required field is missing or null",
    "empty_field": "a required field is empty or blank",
    "not_a_string": "a field or message content is not a string",
    "bad_message": "a message is not a {role, content} mapping",
    "wrong_role": "a message role is unknown or in the wrong place",
    "wrong_format": "the row does not have the shape of the format",
    "bad_transcript": "a Human:/Assistant: transcript cannot be split into turns",
    "prompt_mismatch": "chosen and rejected do not share a prompt",
    "too_few_scored": "fewer than two candidates with a score",
    "tied_scores": "every scored candidate has the same score",
    "tie": "the preference is 0: neither answer is better",
    "other_direction": "no requested translation direction in this row",
    "identical_answers": "chosen and rejected are identical",
    "too_long": "the row's text is over max_row_bytes (dropped before tokenising)",
    "prompt_boundary": "prompt tokens change by more than one when an answer follows",
    "no_answer_room": "no room is left for an answer after the prompt within max_length",
}

#: A raw row that could not even be read (undecodable bytes) carries its problem under this key.
UNREADABLE = "__cpo_unreadable__"


class RowProblem(Exception):
    """A row that cannot be used; `reason` is a key of `DROP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
