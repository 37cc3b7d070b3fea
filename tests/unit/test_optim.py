"""Optimizer and learning-rate schedule built from recipe names."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from cpo_cli.engine.optim import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    warmup_steps,
)
from cpo_cli.errors import DependencyMissingError, RecipeError
from cpo_cli.recipe import TrainingConfig
from cpo_cli.recipe.choices import ENGINE_OPTIMIZERS
from cpo_cli.recipe.optim_args import parse_optim_args


def training(**kwargs: Any) -> TrainingConfig:
    return TrainingConfig(**kwargs)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_skips_biases_norms_and_frozen_parameters() -> None:
    model = Tiny()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.embed.weight), id(model.proj.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model.proj.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw_torch", torch.optim.AdamW),
        ("adamw_torch_fused", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
        ("rmsprop", torch.optim.RMSprop),
        ("adafactor", torch.optim.Adafactor),
    ],
)
def test_optimizers_by_hf_name(name: str, cls: type) -> None:
    opt = build_optimizer(Tiny(), training(optim=name, learning_rate=3e-4, weight_decay=0.01))
    assert type(opt) is cls
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4]


def test_adamw_uses_the_fused_kernel_on_cpu() -> None:
    assert build_optimizer(Tiny(), training(optim="adamw_torch")).defaults["fused"] is True


def test_adam_hyperparameters_come_from_the_recipe() -> None:
    opt = build_optimizer(Tiny(), training(adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6))
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
def test_8bit_optimizer_without_bitsandbytes_is_a_clear_error() -> None:
    with pytest.raises(DependencyMissingError, match="bitsandbytes") as caught:
        build_optimizer(Tiny(), training(optim="adamw_8bit"))
    assert "adamw_torch" in (caught.value.hint or "")


def test_unsupported_optimizer_lists_the_supported_ones() -> None:
    with pytest.raises(RecipeError) as caught:
        build_optimizer(Tiny(), training(optim="lomo"))
    assert "adamw_torch" in caught.value.problems[0]


def test_optim_args_are_typed() -> None:
    assert parse_optim_args("momentum=0.9, nesterov=True,dampening=0") == {
        "momentum": 0.9,
        "nesterov": True,
        "dampening": 0,
    }
    with pytest.raises(ValueError, match="'momentum' is not key=value"):
        parse_optim_args("momentum")


def test_optim_args_reach_the_optimizer() -> None:
    opt = build_optimizer(Tiny(), training(optim="sgd", optim_args="momentum=0.9,nesterov=True"))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True


def test_warmup_steps_win_over_the_ratio() -> None:
    assert warmup_steps(training(warmup_ratio=0.1), 95) == 10  # rounded up
    assert warmup_steps(training(warmup_ratio=0.1, warmup_steps=3), 95) == 3


def lrs(sched: Any, opt: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_linear_schedule_with_warmup() -> None:
    cfg = training(learning_rate=1.0, warmup_steps=2, lr_scheduler_type="linear")
    opt = build_optimizer(Tiny(), cfg)
    assert lrs(build_scheduler(opt, cfg, 6), opt, 6) == pytest.approx(
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    )


def test_scheduler_kwargs_reach_the_schedule() -> None:
    cfg = training(
        learning_rate=1.0,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 0.5},
    )
    opt = build_optimizer(Tiny(), cfg)
    values = lrs(build_scheduler(opt, cfg, 4), opt, 5)
    assert values[0] == pytest.approx(1.0) and min(values) >= 0.5 - 1e-9
    assert values[-1] == pytest.approx(0.5)


def test_bad_scheduler_kwargs_name_the_fields() -> None:
    cfg = training(lr_scheduler_type="linear", lr_scheduler_kwargs={"bogus": 1})
    opt = build_optimizer(Tiny(), cfg)
    with pytest.raises(RecipeError) as caught:
        build_scheduler(opt, cfg, 4)
    assert "lr_scheduler_kwargs" in caught.value.problems[0]


def test_no_trainable_parameters_is_a_recipe_error() -> None:
    model = Tiny().requires_grad_(False)
    with pytest.raises(RecipeError):
        build_optimizer(model, training())


@pytest.mark.parametrize("name", ENGINE_OPTIMIZERS)
def test_every_optimizer_a_recipe_may_name_is_built(name: str) -> None:
    """The recipe's list and the builder cannot drift: each name builds an optimizer, or (for
    bitsandbytes ones without the package) fails with the install hint, never 'unsupported'."""
    try:
        optimizer = build_optimizer(Tiny(), training(optim=name))
    except DependencyMissingError as missing:
        assert "bitsandbytes" in str(missing)
        return
    assert isinstance(optimizer, torch.optim.Optimizer)
