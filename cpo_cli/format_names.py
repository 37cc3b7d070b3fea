"""The data formats and canonical column names, with what each means, in one place for the
recipe schema (which validates them), the data layer (which detects and checks rows by them)
and the help of `cpo prepare` / `cpo eval` (which lists them). Import-light, like
`metric_names`: `cpo --help` reads it without loading the recipe machinery."""

from __future__ import annotations

from typing import Literal, get_args

#: the shapes a row of preference data may have (and the report's row kinds)
RowFormat = Literal["standard", "conversational", "implicit", "scored", "pairwise", "alma_r"]
#: `data.*.format`: a row format, `auto` (detected per dataset), or a `cpo prepare` folder
DataFormat = Literal["auto", RowFormat, "prepared"]
#: canonical column names a `data.*.columns` mapping may set
CanonicalColumn = Literal[
    "prompt",
    "chosen",
    "rejected",
    "messages",
    "system",
    "candidates",
    "scores",
    "response_a",
    "response_b",
    "preference",
    "translation",
]
#: `data.*.chat_template`: how text (non-conversational) rows meet the chat template
ChatTemplateUse = Literal["auto", "always", "never"]
#: `data.*.scorer` (alma_r): which of ALMA-R's `{system}_{lang}_{scorer}` fields rank candidates
AlmaScorer = Literal["kiwi_xcomet", "kiwi", "xcomet"]

DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
#: formats of raw (not yet prepared) data: what `cpo prepare --format` takes
RAW_DATA_FORMATS: tuple[str, ...] = tuple(f for f in DATA_FORMATS if f != "prepared")
CANONICAL_COLUMNS: tuple[str, ...] = get_args(CanonicalColumn)
CHAT_TEMPLATE_USES: tuple[str, ...] = get_args(ChatTemplateUse)
ALMA_SCORERS: tuple[str, ...] = get_args(AlmaScorer)

#: what each format reads (for help and docs; a test checks every format has one)
FORMAT_MEANINGS: dict[str, str] = {
    "auto": "detect the format from the columns and read each row by its shape",
    "standard": "prompt/chosen/rejected text",
    "conversational": "{role, content} message lists (the chat template is applied)",
    "implicit": "chosen/rejected only, the prompt being their shared start: conversations, "
    "Human:/Assistant: transcripts, or text (TRL's common-prefix split)",
    "scored": "candidates with scores: the best-scored is chosen, the worst rejected",
    "pairwise": "response_a/response_b and a signed preference (< 0: a better, > 0: b "
    "better, 0: a tie, dropped)",
    "alma_r": "haoranxu/ALMA-R-Preference `translation` rows, paired as ALMA's code pairs them",
    "prepared": "a folder written by `cpo prepare`",
}
#: what each canonical column holds (a test checks every name has one)
COLUMN_MEANINGS: dict[str, str] = {
    "prompt": "the prompt: text or a message list",
    "chosen": "the preferred answer: text or messages",
    "rejected": "the dispreferred answer: text or messages",
    "messages": "the prompt as a message list (older name for prompt)",
    "system": "a system prompt, made the first turn of the prompt",
    "candidates": "answers to choose from (scored)",
    "scores": "one score per candidate (scored)",
    "response_a": "the first answer of a pairwise row",
    "response_b": "the second answer of a pairwise row",
    "preference": "signed preference between response_a and response_b (pairwise)",
    "translation": "ALMA-R's struct of sentences, system outputs and scores (alma_r)",
}
