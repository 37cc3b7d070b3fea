"""`cpo eval`: preference metrics of a model on held-out pairs, for people and for CI gates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cpo_cli import console
from cpo_cli.errors import UsageError
from cpo_cli.format_names import DATA_FORMATS

if TYPE_CHECKING:
    from cpo_cli.evaluation import GateResult
    from cpo_cli.recipe.loader import LoadedRecipe
    from cpo_cli.recipe.schema import DataSource, Recipe


def eval_cmd(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe YAML (model, data.eval, training).", show_default=False)
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides, e.g. training.beta=0.2.", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model to evaluate: a `cpo train` output folder (LoRA adapters included) or "
            "any model.name_or_path value. Default: the recipe's model.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Pairs to score (any source `cpo prepare` accepts). "
            "Default: the recipe's data.eval.",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split of --dataset.")] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Column mapping of --dataset, e.g. prompt=question,..."),
    ] = None,
    data_format: Annotated[
        str | None,
        typer.Option("--format", help=f"Format of --dataset: {'|'.join(DATA_FORMATS)}."),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", help="Score only the first N rows.", min=1)
    ] = None,
    json_path: Annotated[
        str | None,
        typer.Option("--json", help="Write the results as one JSON object to PATH ('-': stdout)."),
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-under", help="METRIC=VALUE: exit 3 if the metric is below VALUE (repeatable)."
        ),
    ] = None,
    fail_over: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-over",
            help="METRIC=VALUE: exit 3 if the metric is above VALUE (repeatable; for losses).",
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="A second model (folder or name) scored on the same "
            "pairs, shown side by side with the difference.",
        ),
    ] = None,
    generate: Annotated[
        int,
        typer.Option(
            "--generate",
            help="Generate answers to N sampled prompts and report task metrics on them "
            "(eval_gen/answer_accuracy, exact_match, length, length_ratio, repeated_4grams, "
            "distinct_2, truncated).",
            min=0,
        ),
    ] = 0,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Generation length limit.", min=1)
    ] = 64,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0 = greedy (default); > 0 samples.", min=0)
    ] = 0.0,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling (with a temperature).")
    ] = 1.0,
    generations_out: Annotated[
        Path,
        typer.Option("--generations-out", help="JSONL file for --generate."),
    ] = Path("cpo_eval_generations.jsonl"),
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            help="A reward model (folder or name; a sequence classifier with one output) "
            "that scores the generations, the chosen answers and the --compare model's "
            "generations: eval_reward/mean, win_rate_vs_chosen, win_rate_vs_compare.",
        ),
    ] = None,
    reference_metrics: Annotated[
        bool,
        typer.Option(
            "--reference-metrics",
            help="BLEU and chrF of the generations against the "
            "chosen answers (sacrebleu; e.g. translation data).",
        ),
    ] = False,
) -> None:
    """Evaluate a model on preference pairs: the eval_ metrics of training, gates, generations."""
    from cpo_cli import evaluation as ev

    to_stdout = json_path == "-"
    if to_stdout:
        console.set_quiet(True)  # stdout carries only the JSON object
    # with `--json -` anything else written to stdout (a library's logger: DeepSpeed's, imported
    # by accelerate, logs to stdout) goes to stderr, so the output parses as JSON
    with console.stdout_kept_for_results(to_stdout) as results_out:
        valid = ev.gateable_metrics(
            ev.REFERENCE_METRICS if reference_metrics else (),
            generate=bool(generate),
            reward_model=reward_model is not None,
            compare=compare is not None,
        )
        gates = ev.parse_gates(fail_under or [], fail_over or [], valid=valid)
        settings = None
        if generate:
            settings = ev.GenerationSettings(generate, max_new_tokens, temperature, top_p)
            settings.validate()
        elif reference_metrics or reward_model:
            flag = "--reference-metrics" if reference_metrics else "--reward-model"
            raise UsageError(f"{flag} needs --generate N (it measures generated answers)")
        if reference_metrics:
            ev.require_sacrebleu()  # fail now, before any model loads, when it is missing

        loaded = _load_recipe(recipe, overrides or [])
        for warning in loaded.warnings:
            console.warn(warning)
        rec = loaded.recipe
        training = rec.training
        source = _eval_source(rec, dataset, split, columns, data_format, max_rows)
        from cpo_cli.recipe.schema import sources_of

        source_label = ", ".join(s.path for s in sources_of(source))
        if settings is not None:
            settings = ev.GenerationSettings(
                generate, max_new_tokens, temperature, top_p, training.seed
            )

        judge = None
        if reward_model:  # first: a wrong --reward-model fails before minutes of generation
            from cpo_cli.judge import load_reward_model

            console.info(f"loading the reward model {reward_model}")
            judge = load_reward_model(reward_model)
        console.info(f"loading {model or rec.model.name_or_path}")
        subject = ev.load_eval_model(rec, model)
        console.info(f"preparing pairs from {source_label}")
        pairs = ev.prepare_pairs(
            source, subject.tokenizer, training, is_encoder_decoder=subject.is_encoder_decoder
        )
        console.info(f"scoring {len(pairs)} pairs")
        metrics = ev.score_pairs(subject, pairs, training)

        other = None
        other_metrics: dict[str, float] | None = None
        if compare:
            console.info(f"loading {compare} to compare")
            other = ev.load_eval_model(rec, compare)
            ev.check_same_tokenizer(subject, other)
            other_metrics = ev.score_pairs(other, pairs, training)

        records: list[dict[str, Any]] = []
        if settings is not None:
            batch_size = int(training.per_device_eval_batch_size)
            n = min(generate, len(pairs))
            with console.progress(f"generating {n} answers ({label_of(model, rec)})") as bar:
                samples = ev.generate(
                    subject, pairs, settings, batch_size=batch_size, on_progress=bar
                )
            metrics.update(ev.sample_metrics(samples))
            theirs = None
            if other is not None and other_metrics is not None:
                with console.progress(f"generating {n} answers ({compare})") as bar:
                    theirs = ev.generate(
                        other, pairs, settings, batch_size=batch_size, on_progress=bar
                    )
                other_metrics.update(ev.sample_metrics(theirs))
            rewards: dict[str, list[float]] = {}
            if judge is not None:
                with console.progress(f"scoring with {reward_model}") as bar:
                    verdict = ev.judge_samples(
                        judge, samples, theirs, batch_size=batch_size, on_progress=bar
                    )
                rewards = verdict.rewards
                metrics.update(verdict.metrics)
                if other_metrics is not None and verdict.compare_metrics is not None:
                    other_metrics.update(verdict.compare_metrics)
            if reference_metrics:
                metrics.update(ev.reference_metrics(samples))
                if other_metrics is not None and theirs is not None:
                    other_metrics.update(ev.reference_metrics(theirs))
            records = ev.sample_records(samples, theirs, rewards)
            if console.is_main_process():
                ev.write_generations(records, generations_out)

        results = ev.check_gates(metrics, gates)
        label = label_of(model, rec)
        if json_path is not None:
            report = ev.report_json(
                model=label,
                dataset=source_label,
                split=_common_split(sources_of(source)),
                metrics=metrics,
                compare=(compare, other_metrics) if compare and other_metrics is not None else None,
                gates=results,
                generations_path=generations_out if records else None,
            )
            text = json.dumps(report, indent=2, ensure_ascii=False)
            if to_stdout:
                results_out.write(text + "\n")
                results_out.flush()
            elif console.is_main_process():
                Path(json_path).parent.mkdir(parents=True, exist_ok=True)
                Path(json_path).write_text(text + "\n", encoding="utf-8")
        if not to_stdout:
            _print_metrics(label, metrics, compare, other_metrics)
            if records:
                _print_samples(records, compare)
                console.result(f"generations written to {generations_out}", markup=False)
            if json_path is not None:
                console.info(f"results written to {json_path}")
            _print_gates(results)
        ev.raise_on_failed_gates(results)


def label_of(model: str | None, recipe: Recipe) -> str:
    """How the evaluated model is named in tables: --model, else the recipe's model."""
    return model or str(recipe.model.name_or_path)


def _load_recipe(path: Path, overrides: list[str]) -> LoadedRecipe:
    from cpo_cli.recipe import load_recipe

    return load_recipe(path, overrides)


def _eval_source(
    recipe: Recipe,
    dataset: str | None,
    split: str | None,
    columns: str | None,
    data_format: str | None,
    max_rows: int | None,
) -> DataSource | list[DataSource]:
    """The recipe's `data.eval` (a source or a list of them), or a source built from
    --dataset/--split/--columns/--format (validated by the recipe's own DataSource schema)."""
    if dataset is None:
        if split or columns or data_format:
            raise UsageError("--split/--columns/--format describe --dataset; add --dataset SRC")
        if recipe.data.eval is None:
            raise UsageError(
                "the recipe has no data.eval to evaluate on",
                hint="pass --dataset SRC (a file, folder or Hub name), or set data.eval.path",
            )
        source = recipe.data.eval
        if not max_rows:
            return source
        if isinstance(source, list):
            return [s.model_copy(update={"max_rows": max_rows}) for s in source]
        return source.model_copy(update={"max_rows": max_rows})

    from cpo_cli.commands.options import data_source

    return data_source(
        dataset, split=split, columns=columns, data_format=data_format, max_rows=max_rows
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _print_metrics(
    label: str, metrics: dict[str, float], compare: str | None, other: dict[str, float] | None
) -> None:
    from rich.table import Table

    from cpo_cli.evaluation import difference, ordered_metric_names

    table = Table(title=f"cpo eval: {label}", title_justify="left")
    table.add_column("metric")
    table.add_column(label if other is not None else "value", justify="right")
    if other is not None:
        table.add_column(str(compare), justify="right")
        table.add_column("difference", justify="right")
    diff = difference(metrics, other) if other is not None else {}
    for name in ordered_metric_names(metrics, *([other] if other is not None else [])):
        row = [name, _fmt(metrics.get(name))]
        if other is not None:
            row += [_fmt(other.get(name)), _fmt(diff.get(name))]
        table.add_row(*row)
    console.result(table)


#: generations shown in the console table (all of them go to --generations-out)
SHOWN_SAMPLES = 8


def _print_samples(records: list[dict[str, Any]], compare: str | None) -> None:
    from rich.table import Table

    shown = records[:SHOWN_SAMPLES]
    title = "generations"
    if len(records) > len(shown):
        title += f" ({len(shown)} of {len(records)})"
    table = Table(title=title, show_lines=True)
    columns = [
        "prompt",
        "generation",
        *(["compare_generation"] if compare else []),
        "chosen",
        "rejected",
    ]
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in shown:
        table.add_row(*(str(record.get(c, "")) for c in columns))
    console.result(table)


def _print_gates(results: list[GateResult]) -> None:
    for r in results:
        status = "pass" if r.passed else "FAIL"
        console.result(f"gate {r.gate.flag}: {_fmt(r.value)} {status}", markup=False)


def _common_split(sources: Sequence[DataSource]) -> str | None:
    """The split the model card names: the sources' one split, none for a mixture of splits."""
    splits = {s.split for s in sources}
    return splits.pop() if len(splits) == 1 else None
