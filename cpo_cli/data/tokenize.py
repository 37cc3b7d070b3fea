"""Tokenisation and truncation of preference pairs (docs/architecture.md, "Prepared data").

Decoder-only, per pair:
1. `tok(prompt)`, `tok(prompt + chosen)`, `tok(prompt + rejected)`, all without special tokens,
   in three batched tokenizer calls.
2. The shared prompt is the longest common token prefix of the three; the answers are what
   follows it. A tokenizer that merges the last prompt token with the first answer token thus
   moves the boundary left and the merged token belongs to the answers. A prompt that loses
   more than one token this way is dropped (`prompt_boundary`), as the seed does.
3. BOS is prepended once (if the tokenizer has one and it is not already first). Each answer
   ends with EOS: appended unless already last, and a chat template's end-of-turn EOS followed
   only by whitespace (ChatML's `<|im_end|>\\n`) is kept as the end — no doubled marker.
4. Truncation when prompt + longer answer > `max_length`: the prompt is cut to
   `max_prompt_length` (`keep_end` keeps the last tokens, `keep_start` the first; BOS is kept
   either way, unlike the seed), then both answers to what is left of `max_length` (the seed
   reserves `max_length - max_prompt_length` even when the prompt is shorter).
   `max_length: null` means no limit: nothing is truncated (TRL falls back to 512 instead).
5. A pair whose answer would be empty after truncation is dropped (`no_answer_room`), never
   emitted.

Encoder-decoder: the prompt (special tokens added, as the model expects) is the encoder input,
cut to `max_prompt_length`; each answer is cut to `max_completion_length` keeping its EOS
(`null`: answers are not cut; TRL falls back to 128 instead).

Differences from TRL 1.16's `CPOTrainer.tokenize_row`, which we match on pairs that need no
truncation and no boundary merge: TRL never truncates the prompt, cuts answers to
`max_length - len(prompt)` and may emit empty answers; it appends EOS after ChatML's
`<|im_end|>\\n`; on a merge it shifts each answer's boundary separately, so chosen and rejected
may use different prompts (ours share one, and the unmerged answer gains the merged token).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpo_cli.recipe.choices import TruncationMode

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig

#: How many whitespace tokens may follow an end-of-turn EOS and still count as "EOS last".
_MAX_TRAILING_BLANKS = 3


@dataclass(frozen=True)
class LengthSettings:
    """The length settings tokenisation depends on (recorded in the manifest). Built from the
    recipe with `from_training`: the defaults live in the schema only. None means no limit."""

    max_length: int | None
    max_prompt_length: int | None
    max_completion_length: int | None
    truncation_mode: TruncationMode
    is_encoder_decoder: bool

    @classmethod
    def from_training(
        cls, training: TrainingConfig, is_encoder_decoder: bool | None = None
    ) -> LengthSettings:
        """The recipe's lengths; `is_encoder_decoder` (read from the model) wins over
        `training.is_encoder_decoder`, whose None means decoder-only here."""
        if is_encoder_decoder is None:
            is_encoder_decoder = bool(training.is_encoder_decoder)
        return cls(
            max_length=training.max_length,
            max_prompt_length=training.max_prompt_length,
            max_completion_length=training.max_completion_length,
            truncation_mode=training.truncation_mode,
            is_encoder_decoder=is_encoder_decoder,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "max_completion_length": self.max_completion_length,
            "truncation_mode": self.truncation_mode,
            "is_encoder_decoder": self.is_encoder_decoder,
        }


@dataclass
class TokenizedBatch:
    """Per pair: token ids, or the reason it was dropped (`drop[i]` is None when kept)."""

    prompt_input_ids: list[list[int]] = field(default_factory=list)
    chosen_input_ids: list[list[int]] = field(default_factory=list)
    rejected_input_ids: list[list[int]] = field(default_factory=list)
    drop: list[str | None] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    merged: list[bool] = field(default_factory=list)


class _BlankTokens:
    """Which token ids decode to whitespace only (asked per id, remembered)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._known: dict[int, bool] = {}

    def __call__(self, token_id: int) -> bool:
        known = self._known.get(token_id)
        if known is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            known = self._known[token_id] = text != "" and text.isspace()
        return known


_BLANKS: weakref.WeakKeyDictionary[Any, _BlankTokens] = weakref.WeakKeyDictionary()


def _per_tokenizer(cache: weakref.WeakKeyDictionary[Any, Any], tokenizer: Any, make: Any) -> Any:
    """One memo per tokenizer object, for as long as it lives."""
    try:
        memo = cache.get(tokenizer)
        if memo is None:
            memo = cache[tokenizer] = make(tokenizer)
        return memo
    except TypeError:  # not weak-referenceable: a fresh memo is merely slower
        return make(tokenizer)


def _blank_tokens(tokenizer: Any) -> _BlankTokens:
    return _per_tokenizer(_BLANKS, tokenizer, _BlankTokens)  # type: ignore[no-any-return]


class _Encoder:
    """Token ids of many texts. For a fast tokenizer the Rust backend is called directly (the
    `transformers` wrapper builds masks and offsets we do not need, a third of the time); that
    shortcut is checked once against the wrapper and abandoned if they ever disagree."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)
        usable = (
            bool(getattr(tokenizer, "is_fast", False))
            and hasattr(backend, "encode_batch")
            and not getattr(tokenizer, "split_special_tokens", False)
            and not getattr(backend, "encode_special_tokens", False)
        )
        self._backend = backend if usable else None
        self._checked: set[bool] = set()

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        if self._backend is None:
            return self._wrapped(texts, add_special_tokens)
        encodings = self._backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        fast = [e.ids for e in encodings]
        if add_special_tokens not in self._checked:
            sample = texts[:32]
            if self._wrapped(sample, add_special_tokens) != fast[: len(sample)]:
                self._backend = None
                return self._wrapped(texts, add_special_tokens)
            self._checked.add(add_special_tokens)
        return fast

    def _wrapped(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        out = self._tokenizer(
            texts, add_special_tokens=add_special_tokens, return_attention_mask=False
        )
        return [list(ids) for ids in out["input_ids"]]


_ENCODERS: weakref.WeakKeyDictionary[Any, _Encoder] = weakref.WeakKeyDictionary()


def _encoder(tokenizer: Any) -> _Encoder:
    return _per_tokenizer(_ENCODERS, tokenizer, _Encoder)  # type: ignore[no-any-return]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (a slice comparison in C when they agree)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


def end_with_eos(answer: list[int], eos: int | None, is_blank: Any) -> list[int]:
    """The answer with EOS last: kept if last, or if only whitespace tokens follow it (those
    are dropped, so `<|im_end|>\\n` ends at `<|im_end|>`), else appended."""
    if eos is None:
        return answer
    if answer and answer[-1] == eos:
        return answer
    tail = len(answer)
    while tail > 0 and len(answer) - tail < _MAX_TRAILING_BLANKS and is_blank(answer[tail - 1]):
        tail -= 1
        if tail > 0 and answer[tail - 1] == eos:
            return answer[:tail]
    return [*answer, eos]


def truncate_prompt(
    prompt: list[int], limit: int, mode: TruncationMode, bos: int | None
) -> list[int]:
    """The prompt cut to `limit` tokens: the last ones (`keep_end`) or the first; BOS stays."""
    if len(prompt) <= limit:
        return prompt
    if mode == "keep_start":
        return prompt[:limit]
    if bos is not None and prompt and prompt[0] == bos and limit >= 1:
        return [bos, *prompt[len(prompt) - (limit - 1) :]] if limit > 1 else [bos]
    return prompt[len(prompt) - limit :] if limit > 0 else []


def _truncate_decoder_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], s: LengthSettings, bos: int | None
) -> tuple[list[int], list[int], list[int], bool]:
    max_length = s.max_length
    if max_length is None:  # no limit
        return prompt, chosen, rejected, False
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer <= max_length:
        return prompt, chosen, rejected, False
    if s.max_prompt_length is not None:
        prompt = truncate_prompt(prompt, s.max_prompt_length, s.truncation_mode, bos)
    if len(prompt) + longer > max_length:
        budget = max(0, max_length - len(prompt))
        chosen, rejected = chosen[:budget], rejected[:budget]
    return prompt, chosen, rejected, True


def tokenize_pairs(
    prompts: Sequence[str],
    chosens: Sequence[str],
    rejecteds: Sequence[str],
    tokenizer: Any,
    settings: LengthSettings,
) -> TokenizedBatch:
    """Tokenise a batch of text pairs (chat template already applied)."""
    if not prompts:  # tokenizers refuse an empty batch
        return TokenizedBatch()
    if settings.is_encoder_decoder:
        return _tokenize_encoder_decoder(prompts, chosens, rejecteds, tokenizer, settings)
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    is_blank = _blank_tokens(tokenizer)

    encode = _encoder(tokenizer)
    prompt_ids = encode(list(prompts))
    full_chosen = encode([p + c for p, c in zip(prompts, chosens, strict=True)])
    full_rejected = encode([p + r for p, r in zip(prompts, rejecteds, strict=True)])
    out = TokenizedBatch()
    for p, fc, fr in zip(prompt_ids, full_chosen, full_rejected, strict=True):
        n = min(common_prefix_length(p, fc), common_prefix_length(p, fr))
        drop: str | None = None
        if len(p) - n > 1:
            drop = "prompt_boundary"
        prompt = fc[:n]
        if bos is not None and (not prompt or prompt[0] != bos):
            prompt = [bos, *prompt]
        chosen = end_with_eos(fc[n:], eos, is_blank)
        rejected = end_with_eos(fr[n:], eos, is_blank)
        prompt, chosen, rejected, truncated = _truncate_decoder_pair(
            prompt, chosen, rejected, settings, bos
        )
        if drop is None:
            drop = _answer_problem(chosen, rejected)
        out.prompt_input_ids.append(prompt)
        out.chosen_input_ids.append(chosen)
        out.rejected_input_ids.append(rejected)
        out.drop.append(drop)
        out.truncated.append(truncated)
        out.merged.append(n < len(p))
    return out


def _answer_problem(chosen: list[int], rejected: list[int]) -> str | None:
    if not chosen or not rejected:
        return "no_answer_room"
    if chosen == rejected:
        return "identical_answers"
    return None


def _tokenize_encoder_decoder(
    prompts: Sequence[str],
    chosens: Sequence[str],
    rejecteds: Sequence[str],
    tokenizer: Any,
    settings: LengthSettings,
) -> TokenizedBatch:
    eos = tokenizer.eos_token_id
    is_blank = _blank_tokens(tokenizer)
    limit = settings.max_completion_length  # None: answers are not cut

    encoder = _encoder(tokenizer)

    def encode(texts: Sequence[str]) -> list[list[int]]:
        return encoder(list(texts), add_special_tokens=True)

    def fit(answer: list[int]) -> tuple[list[int], bool]:
        answer = end_with_eos(answer, eos, is_blank)
        if limit is None or len(answer) <= limit:
            return answer, False
        cut = [*answer[: limit - 1], eos] if eos is not None and limit > 1 else answer[:limit]
        return cut, True

    out = TokenizedBatch()
    for p, c, r in zip(encode(prompts), encode(chosens), encode(rejecteds), strict=True):
        truncated = False
        if settings.max_prompt_length is not None and len(p) > settings.max_prompt_length:
            p = truncate_prompt(p, settings.max_prompt_length, settings.truncation_mode, None)
            truncated = True
        c, c_cut = fit(c)
        r, r_cut = fit(r)
        out.prompt_input_ids.append(p)
        out.chosen_input_ids.append(c)
        out.rejected_input_ids.append(r)
        out.drop.append("no_answer_room" if not p else _answer_problem(c, r))
        out.truncated.append(truncated or c_cut or r_cut)
        out.merged.append(False)
    return out
