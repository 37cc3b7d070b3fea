"""The metric names users know from TRL's CPOTrainer, in one place for the recipe rules, the
engine's logs and `cpo eval` (torch-free: the recipe layer checks `metric_for_best_model`)."""

from __future__ import annotations

#: per-batch preference metrics, as `engine.objective.batch_loss_and_metrics` returns them
PAIR_METRICS: tuple[str, ...] = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
)
#: what evaluation reports (with the `eval_` prefix), in table order
EVAL_METRICS: tuple[str, ...] = ("loss", *PAIR_METRICS)
#: training-only log entries, after the evaluation ones in log lines and tables
TRAIN_ONLY_METRICS: tuple[str, ...] = (
    "learning_rate",
    "grad_norm",
    "epoch",
    "tokens/s",
    "tflops/s",  # model FLOPs per second of this process (see cpo_cli.engine.flops)
    "mfu",  # tflops/s over the device's measured peak, when one is known
)
