"""Collation of prepared pairs into one batch, in the two layouts the forward understands.

`packed`: one row per pair, `prompt | chosen | rejected`. The prompt runs once; `segment_ids`
(0 prompt, 1 chosen, 2 rejected, -1 padding) let the forward build a mask in which rejected
tokens never see chosen ones, and `position_ids` restart rejected at the end of the prompt, so
every answer token sees exactly the context it has in its own row.

`flat`: padding-free packing across pairs, prefix sharing kept. Every pair of the batch in one
row, `prompt | chosen | rejected | prompt | chosen | rejected ...`, with `pair_ids` beside the
`segment_ids`: attention stays inside a pair, rejected never sees chosen (the engine turns the
ids into a FlexAttention `BlockMask`, which skips the blocks outside each pair).

`varlen`: padding-free without prefix sharing. Every sequence (`prompt | chosen`, `prompt |
rejected`) in one row with `position_ids` restarting at 0 per sequence and no attention mask:
flash-attention varlen kernels (and transformers' own mask builders) read the sequence
boundaries from the position ids.

`pair_rows`: 2B rows, chosen rows first (`prompt | chosen`, then `prompt | rejected`), right
padded — TRL's layout, for models that cannot take a custom 4D mask and for encoder-decoders
(encoder input = prompt, decoder input = answer shifted right).

Both layouts describe every scored answer token the same way: `target_ids` (the token),
`target_rows`/`target_cols` (the position whose output predicts it) and `target_seqs` (its
sequence: chosen i → i, rejected i → B + i). Built with tensor ops; the only Python loop is
over rows, to concatenate their token lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from cpo_cli.errors import DataError

if TYPE_CHECKING:
    import torch

#: the batch layouts the forward understands (see the module docstring)
Layout = Literal["packed", "flat", "varlen", "pair_rows"]
LAYOUTS: tuple[str, ...] = ("packed", "flat", "varlen", "pair_rows")
#: layouts with one row `prompt | chosen | rejected` per pair (prefix sharing)
PREFIX_SHARING_LAYOUTS: tuple[str, ...] = ("packed", "flat")
_KEYS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


def collate_pairs(
    rows: Sequence[Mapping[str, Any]],
    *,
    pad_token_id: int,
    layout: Layout = "packed",
    is_encoder_decoder: bool = False,
    pad_to_multiple_of: int | None = None,
    decoder_start_token_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """One batch from prepared rows (`prompt_input_ids`, `chosen_input_ids`, `rejected_input_ids`).

    Keys: `input_ids`, `attention_mask` (1 on real tokens) and the `target_*` tensors; `packed`
    adds `position_ids` and `segment_ids`, `flat` also `pair_ids`; `varlen` has `position_ids`
    and no `attention_mask`; encoder-decoder adds `decoder_input_ids` and
    `decoder_attention_mask`. Encoder-decoder batches always use `pair_rows`.
    `pad_to_multiple_of` pads `flat` at the end of its one row (padding is its own pair).
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not rows:
        raise DataError("cannot collate an empty batch of pairs")
    prompts, chosens, rejecteds = _token_lists(rows)
    if is_encoder_decoder:
        if decoder_start_token_id is None:
            raise DataError(
                "encoder-decoder batches need decoder_start_token_id",
                hint="set `decoder_start_token_id` in the model config (usually the pad token id)",
            )
        return _encoder_decoder(
            prompts, chosens, rejecteds, pad_token_id, pad_to_multiple_of, decoder_start_token_id
        )

    if layout == "flat":
        return _flat(prompts, chosens, rejecteds, pad_token_id, pad_to_multiple_of)
    if layout == "varlen":
        return _varlen(prompts, chosens, rejecteds)
    p_len = torch.tensor([len(x) for x in prompts])
    c_len = torch.tensor([len(x) for x in chosens])
    n_pairs = len(rows)
    if layout == "packed":
        seqs = [p + c + r for p, c, r in zip(prompts, chosens, rejecteds, strict=True)]
        input_ids, valid, col = _pad_rows(seqs, pad_token_id, pad_to_multiple_of)
        p, pc = p_len[:, None], (p_len + c_len)[:, None]
        segment = (col >= p).long() + (col >= pc).long()
        is_rejected = segment == 2
        position = col - c_len[:, None] * is_rejected
        answer = valid & (segment > 0)
        # The first rejected token is predicted by the last prompt token, like the first chosen.
        first_rejected = is_rejected & (col == pc)
        predictor = torch.where(first_rejected, p - 1, col - 1)
        seq_of = torch.arange(n_pairs)[:, None] + n_pairs * is_rejected
        out = {
            "input_ids": input_ids,
            "attention_mask": valid.long(),
            "position_ids": torch.where(valid, position, 0),
            "segment_ids": torch.where(valid, segment, -1),
        }
    else:
        seqs = [p + c for p, c in zip(prompts, chosens, strict=True)] + [
            p + r for p, r in zip(prompts, rejecteds, strict=True)
        ]
        input_ids, valid, col = _pad_rows(seqs, pad_token_id, pad_to_multiple_of)
        p = torch.cat([p_len, p_len])[:, None]
        answer = valid & (col >= p)
        predictor = col - 1
        seq_of = torch.arange(2 * n_pairs)[:, None].expand_as(col)
        out = {"input_ids": input_ids, "attention_mask": valid.long()}

    # An answer token at column 0 (empty prompt, no BOS) has no predictor; TRL skips it too.
    answer = answer & (predictor >= 0)
    t_rows, t_cols = answer.nonzero(as_tuple=True)
    out["target_ids"] = input_ids[t_rows, t_cols]
    out["target_rows"] = t_rows
    out["target_cols"] = predictor[t_rows, t_cols]
    out["target_seqs"] = seq_of[t_rows, t_cols]
    return out


def _flat(
    prompts: list[list[int]],
    chosens: list[list[int]],
    rejecteds: list[list[int]],
    pad_token_id: int,
    multiple: int | None,
) -> dict[str, torch.Tensor]:
    """All pairs in one row, no padding between them (see `flat` in the module docstring)."""
    import torch

    n_pairs = len(prompts)
    p_len = torch.tensor([len(x) for x in prompts])
    c_len = torch.tensor([len(x) for x in chosens])
    r_len = torch.tensor([len(x) for x in rejecteds])
    pair_len = p_len + c_len + r_len
    real = int(pair_len.sum())
    width = _round_up(real, multiple)
    flat = [t for p, c, r in zip(prompts, chosens, rejecteds, strict=True) for t in (*p, *c, *r)]
    input_ids = torch.full((1, width), pad_token_id, dtype=torch.long)
    input_ids[0, :real] = torch.as_tensor(flat, dtype=torch.long)
    pair = torch.repeat_interleave(torch.arange(n_pairs), pair_len)
    start = torch.cumsum(pair_len, 0) - pair_len  # first column of each pair
    col = torch.arange(real)
    local = col - start[pair]  # column inside its pair
    p, pc = p_len[pair], (p_len + c_len)[pair]
    segment = (local >= p).long() + (local >= pc).long()
    is_rejected = segment == 2
    position = local - c_len[pair] * is_rejected
    first_rejected = is_rejected & (local == pc)
    predictor_local = torch.where(first_rejected, p - 1, local - 1)
    answer = (segment > 0) & (predictor_local >= 0)
    seq_of = pair + n_pairs * is_rejected
    (t_cols,) = answer.nonzero(as_tuple=True)
    pad = width - real
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(1, width, dtype=torch.long),
        "position_ids": torch.cat([position, torch.arange(pad)])[None],
        "segment_ids": torch.cat([segment, torch.full((pad,), -1)])[None],
        "pair_ids": torch.cat([pair, torch.full((pad,), -1)])[None],
        "pair_lengths": pair_len,  # its shape gives the number of pairs without a device sync
        "target_ids": input_ids[0, t_cols],
        "target_rows": torch.zeros_like(t_cols),
        "target_cols": (start[pair] + predictor_local)[t_cols],
        "target_seqs": seq_of[t_cols],
    }


def _varlen(
    prompts: list[list[int]], chosens: list[list[int]], rejecteds: list[list[int]]
) -> dict[str, torch.Tensor]:
    """Every sequence in one row, chosen i then rejected i, positions restarting per sequence."""
    import torch

    n_pairs = len(prompts)
    seqs = [s for p, c, r in zip(prompts, chosens, rejecteds, strict=True) for s in (p + c, p + r)]
    seq_len = torch.tensor([len(s) for s in seqs])
    p_len = torch.tensor([len(p) for p in prompts]).repeat_interleave(2)
    # sequence k of the row is pair k // 2, chosen when k is even
    seq_ids = torch.arange(2 * n_pairs)
    seq_of_k = seq_ids // 2 + n_pairs * (seq_ids % 2)
    k = torch.repeat_interleave(seq_ids, seq_len)
    start = torch.cumsum(seq_len, 0) - seq_len
    col = torch.arange(int(seq_len.sum()))
    local = col - start[k]
    answer = (local >= p_len[k]) & (local >= 1)  # an answer token at column 0 has no predictor
    (t_cols,) = answer.nonzero(as_tuple=True)
    input_ids = torch.as_tensor([t for s in seqs for t in s], dtype=torch.long)[None]
    return {
        "input_ids": input_ids,
        "position_ids": local[None],
        "seq_lengths": seq_len,  # its shape gives the number of sequences without a device sync
        "target_ids": input_ids[0, t_cols],
        "target_rows": torch.zeros_like(t_cols),
        "target_cols": t_cols - 1,
        "target_seqs": seq_of_k[k[t_cols]],
    }


def _token_lists(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    out: tuple[list[list[int]], list[list[int]], list[list[int]]] = ([], [], [])
    for i, row in enumerate(rows):
        for key, dest in zip(_KEYS, out, strict=True):
            if key not in row:
                raise DataError(
                    f"row {i} of the batch has no `{key}` column",
                    hint="collate prepared data (run `cpo prepare` or prepare it in the engine)",
                )
            ids = row[key]
            dest.append(ids.tolist() if hasattr(ids, "tolist") else list(ids))
        for key, dest in zip(_KEYS[1:], out[1:], strict=True):
            if not dest[-1]:
                raise DataError(
                    f"row {i} of the batch has an empty `{key}`",
                    hint="every answer needs at least one token (its EOS); re-run `cpo prepare`",
                )
    return out


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _pad_rows(
    seqs: list[list[int]], pad_value: int, multiple: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded [rows, T] ids, the [rows, T] mask of real tokens, and the column index grid."""
    import torch

    lengths = torch.tensor([len(s) for s in seqs])
    width = _round_up(int(lengths.max()), multiple)
    flat = torch.cat([torch.as_tensor(s, dtype=torch.long) for s in seqs])
    col = torch.arange(width).expand(len(seqs), width)
    valid = col < lengths[:, None]
    ids = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    ids[valid] = flat  # row-major order of `valid` is the concatenation order of `flat`
    return ids, valid, col


def _encoder_decoder(
    prompts: list[list[int]],
    chosens: list[list[int]],
    rejecteds: list[list[int]],
    pad_token_id: int,
    multiple: int | None,
    decoder_start_token_id: int,
) -> dict[str, torch.Tensor]:
    """Encoder input = prompt (repeated for chosen and rejected rows), labels = answers."""
    import torch

    enc_ids, enc_valid, _ = _pad_rows(prompts + prompts, pad_token_id, multiple)
    labels, dec_valid, _ = _pad_rows(chosens + rejecteds, pad_token_id, multiple)
    decoder_input_ids = torch.full_like(labels, pad_token_id)
    decoder_input_ids[:, 0] = decoder_start_token_id
    decoder_input_ids[:, 1:] = torch.where(dec_valid[:, :-1], labels[:, :-1], pad_token_id)
    t_rows, t_cols = dec_valid.nonzero(as_tuple=True)
    return {
        "input_ids": enc_ids,
        "attention_mask": enc_valid.long(),
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": dec_valid.long(),
        "target_ids": labels[t_rows, t_cols],
        "target_rows": t_rows,
        "target_cols": t_cols,
        "target_seqs": t_rows.clone(),
    }
