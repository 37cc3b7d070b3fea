"""Dataloaders over prepared pairs: a seeded, resumable order (`data_seed`, `group_by_length`)
and dynamic padding (each batch padded to its own longest row by `collate_pairs`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from cpo_cli.data.token_batching import longest_first

if TYPE_CHECKING:
    from cpo_cli.data.collate import Layout
    from cpo_cli.recipe.schema import DataSource, Recipe
    from cpo_cli.recipe.training import TrainingConfig

#: rows per "megabatch" sorted by length under group_by_length, in batches (as the HF Trainer)
MEGABATCH_FACTOR = 50


def pair_lengths(dataset: Any) -> list[int]:
    """Tokens a pair costs in a batch: prompt + the longer answer."""
    prompts = dataset["prompt_input_ids"]
    chosen = dataset["chosen_input_ids"]
    rejected = dataset["rejected_input_ids"]
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected, strict=True)]


class EpochSampler:
    """Row order for one epoch as a pure function of (seed, epoch): a resumed run rebuilds the
    exact same order and skips the batches already done. With `lengths`, rows of similar length
    are grouped (random megabatches, each sorted longest first) to cut padding.

    The epoch is set with `use_epoch`, deliberately not `set_epoch`: accelerate calls
    `set_epoch(<its own iteration count>)` on samplers, which restarts at 0 after a resume."""

    def __init__(
        self,
        num_rows: int,
        *,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = lengths
        self.batch_size = batch_size
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        import torch

        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.num_rows, generator=generator).tolist()
        if self.lengths is None:
            return perm
        size = self.batch_size * MEGABATCH_FACTOR
        lengths = self.lengths
        megabatches = [
            sorted(perm[start : start + size], key=lambda i: -lengths[i])
            for start in range(0, len(perm), size)
        ]
        # the megabatch holding the longest pair goes first (its first batch is the longest),
        # so an out-of-memory error shows at step 1, as in the HF length-grouped sampler
        firsts = [lengths[m[0]] for m in megabatches]
        megabatches = longest_first(megabatches, firsts)
        return [i for m in megabatches for i in m]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.num_rows


class DeferredLayout:
    """The batch layout, chosen once the model is prepared (the probe that chooses it runs the
    prepared model, which under FSDP/ZeRO-3 only then can run) and read by the collate
    function when batches are made, i.e. after the loaders were prepared with the model."""

    def __init__(self) -> None:
        self.value: Layout | None = None

    def __call__(self) -> Layout:
        if self.value is None:
            raise RuntimeError("internal error: batches made before the layout was chosen")
        return self.value


class TokenBudgetBatches:
    """Micro-batches by a token budget (`max_tokens_per_batch`), for `DataLoader(batch_sampler=)`.

    The batches are formed once (on first use), from a length-grouped order drawn with `seed`
    alone, so every epoch has the same number of batches (the plan's step count stays exact
    and a resumed run skips exactly the batches already done); each epoch shuffles their order
    with (seed, epoch) and puts the costliest batch first."""

    def __init__(
        self,
        pair_token_lengths: list[tuple[int, int, int]],
        *,
        budget: int,
        max_pairs: int,
        layout: Layout | DeferredLayout,
        seed: int,
    ) -> None:
        self.pair_token_lengths = pair_token_lengths
        self.budget, self.max_pairs, self.layout = budget, max_pairs, layout
        self.seed = seed
        self.epoch = 0
        self._formed: tuple[list[list[int]], list[int]] | None = None

    @property
    def batches(self) -> list[list[int]]:
        return self._form()[0]

    @property
    def costs(self) -> list[int]:
        return self._form()[1]

    def _form(self) -> tuple[list[list[int]], list[int]]:
        """Formed on first use: a token's cost depends on the layout, which the prepared model
        decides (`DeferredLayout`), and accelerate asks for the length only after preparing."""
        if self._formed is None:
            from cpo_cli.data.token_batching import batch_tokens, token_budget_batches

            layout = self.layout() if callable(self.layout) else self.layout
            pairs = self.pair_token_lengths
            lengths = [p + max(c, r) for p, c, r in pairs]
            grouped = EpochSampler(
                len(lengths), seed=self.seed, lengths=lengths, batch_size=self.max_pairs
            ).order()
            batches = token_budget_batches(
                grouped, pairs, budget=self.budget, max_pairs=self.max_pairs, layout=layout
            )
            costs = [batch_tokens([pairs[i] for i in b], layout) for b in batches]
            self._formed = (batches, costs)
        return self._formed

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[list[int]]:
        import torch

        from cpo_cli.data.token_batching import longest_first

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.batches), generator=generator).tolist()
        return longest_first([self.batches[i] for i in perm], [self.costs[i] for i in perm])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.order())

    def __len__(self) -> int:
        return len(self.batches)


def pair_token_lengths(dataset: Any) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of every pair."""
    return [
        (len(p), len(c), len(r))
        for p, c, r in zip(
            dataset["prompt_input_ids"],
            dataset["chosen_input_ids"],
            dataset["rejected_input_ids"],
            strict=True,
        )
    ]


def _collate(
    rows: list[dict[str, Any]],
    *,
    pad_token_id: int,
    layout: Layout | DeferredLayout,
    is_encoder_decoder: bool,
    decoder_start_token_id: int | None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The padded batch plus its size (pairs, real tokens, chosen-answer tokens; the work the
    loss needs, for model FLOPs: `engine.flops.pair_work`), counted here where it is cheap: the loop
    needs them for weighted averages, the NLL term, tokens/s and FLOP/s."""
    from cpo_cli.data.collate import collate_pairs

    batch = collate_pairs(
        rows,
        pad_token_id=pad_token_id,
        layout=layout() if callable(layout) else layout,
        is_encoder_decoder=is_encoder_decoder,
        decoder_start_token_id=decoder_start_token_id,
    )
    from cpo_cli.engine.flops import PairWork, pair_work

    tokens = chosen = 0
    work = PairWork()
    for r in rows:
        p, c = len(r["prompt_input_ids"]), len(r["chosen_input_ids"])
        rej = len(r["rejected_input_ids"])
        tokens += p + c + rej
        chosen += c
        work += pair_work(p, c, rej)
    sizes = {
        "pairs": len(rows),
        "tokens": tokens,
        "chosen_tokens": chosen,
        "layer_tokens": work.layer_tokens,
        "head_tokens": work.head_tokens,
        "attention_products": work.attention_products,
    }
    return batch, sizes


def _collate_fn(
    pad_token_id: int,
    layout: Layout | DeferredLayout,
    is_encoder_decoder: bool,
    decoder_start_token_id: int | None,
) -> Any:
    return partial(
        _collate,
        pad_token_id=pad_token_id,
        layout="pair_rows" if is_encoder_decoder else layout,
        is_encoder_decoder=is_encoder_decoder,
        decoder_start_token_id=decoder_start_token_id,
    )


def _loader(
    dataset: Any,
    *,
    batch_size: int,
    sampler: Any,
    training: TrainingConfig,
    collate: Any,
    drop_last: bool,
    batch_sampler: Any = None,
) -> Any:
    import torch
    from torch.utils.data import DataLoader

    workers = training.dataloader_num_workers
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["persistent_workers"] = training.dataloader_persistent_workers
        if training.dataloader_prefetch_factor is not None:
            kwargs["prefetch_factor"] = training.dataloader_prefetch_factor
    keep = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]
    token_view = dataset.select_columns([c for c in keep if c in dataset.column_names])
    if batch_sampler is not None:  # micro-batches by a token budget
        kwargs["batch_sampler"] = batch_sampler
    else:
        kwargs.update(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    return DataLoader(
        token_view,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=training.dataloader_pin_memory and _has_cuda(),
        # its own generator: creating an iterator must not draw from the global RNG, or a
        # resumed run (which creates one more iterator) would see different dropout/noise
        generator=torch.Generator().manual_seed(training.seed),
        **kwargs,
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_train_dataloader(
    dataset: Any,
    training: TrainingConfig,
    *,
    pad_token_id: int,
    is_encoder_decoder: bool,
    layout: Layout | DeferredLayout,
    decoder_start_token_id: int | None = None,
) -> tuple[Any, EpochSampler | TokenBudgetBatches]:
    """The training loader and its sampler (the loop sets the epoch on it)."""
    seed = training.data_seed if training.data_seed is not None else training.seed
    collate = _collate_fn(pad_token_id, layout, is_encoder_decoder, decoder_start_token_id)
    if training.max_tokens_per_batch is not None:
        batches = TokenBudgetBatches(
            pair_token_lengths(dataset),
            budget=training.max_tokens_per_batch,
            max_pairs=training.per_device_train_batch_size,
            layout="pair_rows" if is_encoder_decoder else layout,
            seed=seed,
        )
        loader = _loader(
            dataset,
            batch_size=1,
            sampler=None,
            training=training,
            collate=collate,
            drop_last=False,
            batch_sampler=batches,
        )
        return loader, batches
    lengths = pair_lengths(dataset) if training.group_by_length else None
    sampler = EpochSampler(
        len(dataset), seed=seed, lengths=lengths, batch_size=training.per_device_train_batch_size
    )
    loader = _loader(
        dataset,
        batch_size=training.per_device_train_batch_size,
        sampler=sampler,
        training=training,
        collate=collate,
        drop_last=training.dataloader_drop_last,
    )
    return loader, sampler


def build_eval_dataloader(
    dataset: Any,
    training: TrainingConfig,
    *,
    pad_token_id: int,
    is_encoder_decoder: bool,
    layout: Layout | DeferredLayout,
    decoder_start_token_id: int | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> Any:
    """In dataset order, never dropping rows: every held-out pair is scored exactly once.

    With several processes each takes every `num_processes`-th pair. The loader is not
    `accelerator.prepare`d: accelerate would pad the last batches with repeated pairs (so that
    every process has as many batches), and those repeats would be counted in the means."""
    if num_processes > 1:
        dataset = dataset.select(range(process_index, len(dataset), num_processes))
    sampler = EpochSampler(len(dataset), seed=0, shuffle=False)
    collate = _collate_fn(pad_token_id, layout, is_encoder_decoder, decoder_start_token_id)
    return _loader(
        dataset,
        batch_size=training.per_device_eval_batch_size,
        sampler=sampler,
        training=training,
        collate=collate,
        drop_last=False,
    )


def prepare_source(
    name: str,
    source: DataSource | list[DataSource],
    tokenizer: Any,
    training: TrainingConfig,
    *,
    is_encoder_decoder: bool,
) -> Any:
    """`data.{name}` as training uses it: one source or a list of them (a mixture), each a
    `cpo prepare` folder checked against this tokenizer and these lengths, or a raw source
    prepared in-process (cached). `cpo eval` shares it, so eval pairs are exactly the pairs
    training would see."""
    from cpo_cli import console
    from cpo_cli.data.cache import prepared_cache_dir
    from cpo_cli.data.mixture import prepare_mixture
    from cpo_cli.errors import DataError
    from cpo_cli.recipe.schema import sources_of

    sources = sources_of(source)
    seed = training.data_seed if training.data_seed is not None else training.seed
    try:
        mixed, parts = prepare_mixture(
            sources,
            tokenizer,
            training,
            seed=seed,
            cache_dir=prepared_cache_dir(),
            is_encoder_decoder=is_encoder_decoder,
        )
    except DataError as err:
        raise DataError(f"data.{name}: {err.message}", hint=err.hint, details=err.details) from err
    for index, (src, part) in enumerate(zip(sources, parts, strict=True)):
        report = part.report
        label = f"data.{name}" + (f"[{index}]" if len(sources) > 1 else "")
        dropped = f", {report.rows_dropped} dropped" if report.rows_dropped else ""
        console.info(f"{label}: {report.rows_kept} pairs from {src.path}{dropped}")
        for line in report.drop_lines():
            console.info(f"  {line}")
    if len(sources) > 1 or sources[0].weight != 1:
        used = ", ".join(f"{s['used']} from {s['source']}" for s in mixed.report.sources)
        console.info(f"data.{name}: {len(mixed.dataset)} pairs in the mixture ({used})")
    return mixed.dataset


def load_datasets(recipe: Recipe, tokenizer: Any, is_encoder_decoder: bool) -> tuple[Any, Any]:
    """Prepared train and eval datasets (eval is None when the recipe has none)."""
    from cpo_cli.errors import RecipeError

    if recipe.data.train is None:
        raise RecipeError(
            "recipe", ["data.train: cpo train needs a training dataset (data.train.path)"]
        )
    out = [
        None
        if source is None
        else prepare_source(
            name, source, tokenizer, recipe.training, is_encoder_decoder=is_encoder_decoder
        )
        for name, source in (("train", recipe.data.train), ("eval", recipe.data.eval))
    ]
    return out[0], out[1]


def loader_settings(
    model: Any,
    tokenizer: Any,
    training: TrainingConfig,
    *,
    is_encoder_decoder: bool,
    layout: DeferredLayout | None = None,
) -> dict[str, Any]:
    """Collation settings shared by the train and eval loaders of `cpo train` and `cpo eval`:
    pad id (`padding_value` or the tokenizer's), batch layout (what the model's attention takes,
    `choose_batch_layout`; `layout` defers that choice until the model is prepared), decoder
    start id for encoder-decoders."""
    chosen: Layout | DeferredLayout
    if is_encoder_decoder:
        chosen = "pair_rows"
    elif layout is not None:
        chosen = layout
    else:
        chosen = choose_batch_layout(model, training, is_encoder_decoder=False)
    pad_id = (
        training.padding_value if training.padding_value is not None else tokenizer.pad_token_id
    )
    return {
        "pad_token_id": pad_id,
        "layout": chosen,
        "is_encoder_decoder": is_encoder_decoder,
        "decoder_start_token_id": getattr(
            getattr(model, "config", None), "decoder_start_token_id", None
        ),
    }


def choose_batch_layout(
    model: Any, training: TrainingConfig, *, is_encoder_decoder: bool
) -> Layout:
    """The layout the model's attention takes when the probe agrees (`choose_layout`), else
    `pair_rows`. The probe runs the model: call it on every process, after
    `accelerator.prepare`."""
    from cpo_cli.engine.layout_probe import choose_layout

    if is_encoder_decoder:
        return "pair_rows"
    return choose_layout(model, prefix_sharing=training.prefix_sharing)
