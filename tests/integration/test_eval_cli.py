"""`cpo eval` end to end on the tiny model: a short real training run, then the CLI on its output.
The numbers must equal the training loop's own final evaluation of the same weights and pairs."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import TINY_RUN, Result, cpo_process, write_recipe

from cpo_cli.errors import EXIT_GATE_FAILED, EXIT_USAGE
from cpo_cli.evaluation import EVAL_METRICS, NUM_PAIRS
from cpo_cli.gen_metrics import GENERATION_METRICS

pytestmark = pytest.mark.usefixtures("private_cache")  # prepared pairs stay out of ~/.cache

EVAL_ROWS = 12
SAMPLE_FIELDS = {
    "prompt",
    "generation",
    "chosen",
    "rejected",
    "tokens",
    "finished",
    "answer_correct",
}


#: the run trained before `cpo eval` scores its output (the engine's final evaluation is what
#: the CLI must reproduce)
RUN = {
    **TINY_RUN,
    "per_device_eval_batch_size": 5,  # a partial last batch: weighting must be exact
    "learning_rate": 5e-3,
    "max_length": 128,
    "max_prompt_length": 64,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "disable_tqdm": True,
    "cpo_alpha": 1.0,
}


def write_run_recipe(
    path: Path, model_dir: Path, train: Path, evaluation: Path, out: Path, **options: Any
) -> Path:
    return write_recipe(
        path,
        model_dir,
        train=train,
        eval=evaluation,
        out=out,
        train_rows=16,
        eval_rows=EVAL_ROWS,
        **{**RUN, **options},
    )


def train_run(recipe: Path) -> dict[str, float]:
    """Train with the engine; return the final evaluation it reported."""
    from cpo_cli.engine.loop import train
    from cpo_cli.recipe import load_recipe

    result = train(load_recipe(recipe, []), show_progress=False)
    return {k: v for k, v in result.metrics.items() if k.startswith("eval_")}


@pytest.fixture(scope="module")
def trained(
    private_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    demo_train_path: Path,
    demo_eval_path: Path,
) -> tuple[Path, Path, dict[str, float]]:
    root = tmp_path_factory.mktemp("eval_run")
    recipe = write_run_recipe(
        root / "recipe.yaml", tiny_model_dir, demo_train_path, demo_eval_path, root / "out"
    )
    return recipe, root / "out", train_run(recipe)


def assert_close(a: float, b: float, rel: float = 1e-5) -> None:
    assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-6), (a, b)


def test_eval_equals_the_training_loops_evaluation(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict]
) -> None:
    recipe, out, engine_eval = trained
    result = cli("eval", str(recipe), "--model", str(out), "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert set(EVAL_METRICS) <= set(engine_eval), engine_eval
    assert set(metrics) == {*EVAL_METRICS, NUM_PAIRS}
    assert report["num_pairs"] == EVAL_ROWS and metrics[NUM_PAIRS] == EVAL_ROWS
    for name in EVAL_METRICS:
        assert_close(metrics[name], engine_eval[name])


def test_json_file_table_and_gates(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    recipe, out, engine_eval = trained
    accuracy = engine_eval["eval_rewards/accuracies"]
    report_path = tmp_path / "ci" / "eval.json"
    ok = cli(
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--json",
        str(report_path),
        "--fail-under",
        f"rewards/accuracies={accuracy - 0.01}",
        "--fail-over",
        "eval_loss=1e6",
    )
    assert ok.exit_code == 0, ok.output
    assert "eval_rewards/margins" in ok.stdout  # the table
    saved = json.loads(report_path.read_text())
    assert [g["passed"] for g in saved["gates"]] == [True, True]

    bad = cli(
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--json",
        str(report_path),
        "--fail-under",
        f"eval_rewards/accuracies={accuracy + 0.01}",
    )
    assert bad.exit_code == EXIT_GATE_FAILED
    assert "eval_rewards/accuracies" in bad.output and "below the threshold" in bad.output
    assert json.loads(report_path.read_text())["gates"][0]["passed"] is False  # still written

    unknown = cli("eval", str(recipe), "--fail-under", "eval_accuracy=0.5")
    assert unknown.exit_code == EXIT_USAGE
    assert "unknown metric 'eval_accuracy'" in unknown.output
    assert "eval_rewards/accuracies" in unknown.output


def test_compare_with_the_base_model(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict], tiny_model_dir: Path
) -> None:
    recipe, out, _ = trained
    result = cli(
        "eval", str(recipe), "--model", str(out), "--compare", str(tiny_model_dir), "--json", "-"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    mine, theirs = report["metrics"], report["compare"]["metrics"]
    assert report["compare"]["model"] == str(tiny_model_dir)
    for name in EVAL_METRICS:
        assert_close(report["compare"]["difference"][name], mine[name] - theirs[name])
    assert mine["eval_loss"] != theirs["eval_loss"]  # training changed the model

    base_alone = json.loads(cli("eval", str(recipe), "--json", "-").stdout)["metrics"]
    for name in EVAL_METRICS:  # the recipe's own model is the base: same numbers
        assert_close(base_alone[name], theirs[name])


def test_generations_file_and_reference_metrics(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    recipe, out, _ = trained
    gens = tmp_path / "gens.jsonl"
    result = cli(
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--generate",
        "3",
        "--max-new-tokens",
        "4",
        "--generations-out",
        str(gens),
        "--reference-metrics",
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(lines) == 3
    assert all(set(row) == SAMPLE_FIELDS for row in lines)
    assert all(row["prompt"] and row["chosen"] for row in lines)
    assert all(0 <= row["tokens"] <= 4 for row in lines)
    report = json.loads(result.stdout)
    assert 0 <= report["metrics"]["eval_chrf"] <= 100 and "eval_bleu" in report["metrics"]
    measured = report["metrics"]
    assert {m for m in GENERATION_METRICS if m in measured} >= {
        "eval_gen/length",
        "eval_gen/length_ratio",
        "eval_gen/truncated",
        "eval_gen/num_samples",
    }
    assert measured["eval_gen/num_samples"] == 3
    # the metrics are those of the written samples
    assert measured["eval_gen/length"] == pytest.approx(sum(r["tokens"] for r in lines) / 3)
    unfinished = sum(not r["finished"] for r in lines)
    assert measured["eval_gen/truncated"] == pytest.approx(unfinished / 3)
    assert report["generations"] == str(gens)

    again = tmp_path / "again.jsonl"
    cli(
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--generate",
        "3",
        "--max-new-tokens",
        "4",
        "--generations-out",
        str(again),
        "--json",
        "-",
    )
    assert again.read_text() == gens.read_text()  # greedy and seeded: reproducible


def test_dataset_flag_and_usage_errors(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict], demo_data_dir: Path
) -> None:
    recipe, out, _ = trained
    conv = demo_data_dir / "demo_eval_conversational.jsonl"
    result = cli(
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--dataset",
        str(conv),
        "--max-rows",
        "4",
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_pairs"] == 4

    no_dataset = cli("eval", str(recipe), "--split", "test")
    assert no_dataset.exit_code == EXIT_USAGE and "--dataset" in no_dataset.output
    not_model = cli("eval", str(recipe), "--model", str(recipe.parent))
    assert not_model.exit_code == EXIT_USAGE and "not a model folder" in not_model.output


def test_a_list_of_eval_sources(
    cli: Callable[..., Result], trained: tuple[Path, Path, dict], demo_data_dir: Path
) -> None:
    """`data.eval` as a list (a mixture): the same list `cpo train` accepts."""
    recipe, out, _ = trained
    conv = demo_data_dir / "demo_eval_conversational.jsonl"
    plain = demo_data_dir / "demo_eval.jsonl"
    result = cli(
        "eval", str(recipe), "--model", str(out), "--json", "-",
        f"data.eval=[{{path: {plain}, max_rows: 3}}, {{path: {conv}, max_rows: 2}}]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_pairs"] == 5 and report["dataset"] == f"{plain}, {conv}"


def test_lora_adapters_equal_the_training_loops_evaluation(
    cli: Callable[..., Result],
    tmp_path: Path,
    tiny_model_dir: Path,
    demo_train_path: Path,
    demo_eval_path: Path,
) -> None:
    peft = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    recipe = write_run_recipe(
        tmp_path / "recipe.yaml",
        tiny_model_dir,
        demo_train_path,
        demo_eval_path,
        tmp_path / "out",
        peft=peft,
    )
    engine_eval = train_run(recipe)
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    result = cli("eval", str(recipe), "--model", str(tmp_path / "out"), "--json", "-")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    for name in EVAL_METRICS:
        assert_close(metrics[name], engine_eval[name])


def test_encoder_decoder_with_compare_generations(
    cli: Callable[..., Result], tmp_path: Path, tiny_seq2seq_dir: Path, demo_eval_path: Path
) -> None:
    recipe = write_recipe(
        tmp_path / "t5.yaml",
        tiny_seq2seq_dir,
        eval=demo_eval_path,
        eval_rows=6,
        per_device_eval_batch_size=4,
        max_completion_length=32,
    )
    gens = tmp_path / "gens.jsonl"
    result = cli(
        "eval",
        str(recipe),
        "--compare",
        str(tiny_seq2seq_dir),
        "--generate",
        "2",
        "--max-new-tokens",
        "3",
        "--generations-out",
        str(gens),
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(EVAL_METRICS) <= set(report["metrics"]) and report["num_pairs"] == 6
    assert all(v == 0 for v in report["compare"]["difference"].values())  # same model twice
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(rows) == 2 and all(r["compare_generation"] == r["generation"] for r in rows)


def test_reward_model_judges_generations_chosen_answers_and_the_compared_model(
    cli: Callable[..., Result],
    trained: tuple[Path, Path, dict],
    tiny_model_dir: Path,
    tiny_reward_model_dir: Path,
    tmp_path: Path,
) -> None:
    from cpo_cli import judge as jd

    recipe, out, _ = trained
    gens = tmp_path / "judged.jsonl"
    args = [
        "eval",
        str(recipe),
        "--model",
        str(out),
        "--compare",
        str(tiny_model_dir),
        "--generate",
        "4",
        "--max-new-tokens",
        "6",
        "--reward-model",
        str(tiny_reward_model_dir),
        "--generations-out",
        str(gens),
        "--json",
        "-",
    ]
    result = cli(*args, "--fail-under", "reward/win_rate_vs_chosen=0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(rows) == 4
    assert set(rows[0]) == {
        *SAMPLE_FIELDS,
        "compare_generation",
        "compare_tokens",
        "compare_finished",
        "compare_answer_correct",
        "reward",
        "chosen_reward",
        "compare_reward",
    }
    # the metrics are the judge's rewards of the written rows, recomputed by hand
    mine, theirs = report["metrics"], report["compare"]["metrics"]
    rewards = [r["reward"] for r in rows]
    chosen = [r["chosen_reward"] for r in rows]
    compared = [r["compare_reward"] for r in rows]
    assert mine[jd.REWARD_MEAN] == pytest.approx(sum(rewards) / 4)
    assert mine[jd.REWARD_CHOSEN_MEAN] == pytest.approx(sum(chosen) / 4)
    assert mine[jd.WIN_RATE_VS_CHOSEN] == pytest.approx(jd.win_rate(rewards, chosen))
    assert mine[jd.WIN_RATE_VS_COMPARE] == pytest.approx(jd.win_rate(rewards, compared))
    assert theirs[jd.REWARD_MEAN] == pytest.approx(sum(compared) / 4)
    assert jd.WIN_RATE_VS_COMPARE not in theirs
    # a judge loaded on its own gives the same reward for the same text
    judge = jd.load_reward_model(str(tiny_reward_model_dir))
    again = jd.score(judge, [rows[0]["prompt"]], [rows[0]["generation"]], batch_size=1)
    assert again[0] == pytest.approx(rows[0]["reward"], abs=1e-5)

    failing = cli(*args, "--fail-under", "eval_reward/win_rate_vs_chosen=1.01")
    assert failing.exit_code == EXIT_GATE_FAILED
    assert "eval_reward/win_rate_vs_chosen" in failing.output

    no_generate = cli("eval", str(recipe), "--reward-model", str(tiny_reward_model_dir))
    assert no_generate.exit_code == EXIT_USAGE and "--reward-model needs --generate" in (
        no_generate.output
    )


@pytest.mark.distributed
def test_generation_shared_out_across_two_processes(
    trained: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """5 prompts over 2 processes (3 + 2, the short share padded): the answers, gathered back
    in order, are those of one process, written once."""
    recipe, out, _ = trained
    written = {}
    for processes in (1, 2):
        path = tmp_path / f"generations{processes}.jsonl"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        done = cpo_process(
            "eval",
            str(recipe),
            "--model",
            str(out),
            "--generate",
            "5",
            "--max-new-tokens",
            "6",
            "--generations-out",
            str(path),
            "--json",
            str(tmp_path / f"report{processes}.json"),
            launcher=launcher if processes == 2 else None,
        )
        assert done.exit_code == 0, done.stderr[-3000:]
        written[processes] = path.read_text(encoding="utf-8")
    assert len(written[1].splitlines()) == 5
    assert written[2] == written[1]
