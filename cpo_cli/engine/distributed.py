"""Which distributed mode a run is in, and saying so.

- The recipe's HF Trainer fields become accelerate's own objects: `fsdp`/`fsdp_config` a
  `FullyShardedDataParallelPlugin`, `deepspeed` a `DeepSpeedPlugin`, `ddp_backend`/`ddp_timeout`
  the process group's `InitProcessGroupKwargs`, `ddp_find_unused_parameters`/
  `ddp_bucket_cap_mb`/`ddp_broadcast_buffers` `DistributedDataParallelKwargs`. Processes are
  started by the launcher (torchrun, `accelerate launch`, srun), never by cpo.
- What the launcher asked for (WORLD_SIZE, `accelerate launch`'s options and config file, an
  srun step's task count) is compared with what started: a launch that silently runs one
  process, or an FSDP/ZeRO request that accelerate turned into plain DDP, is a warning; FSDP or
  DeepSpeed asked for by both the recipe and the launcher is an error.
- One start-up line says what runs: processes and machines, the mode, mixed precision, and the
  batch arithmetic.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import RecipeError

if TYPE_CHECKING:
    from cpo_cli.engine.schedule import Plan
    from cpo_cli.recipe.distributed import DeepSpeedRequest, FsdpRequest
    from cpo_cli.recipe.training import TrainingConfig


# --------------------------------------------------------------------------- what was asked


@dataclass(frozen=True)
class LauncherRequest:
    """What the launcher asked for, read before accelerate changes the environment."""

    #: processes the launcher asked for, and who asked (None: no request seen)
    processes: int | None = None
    processes_source: str = ""
    #: FSDP / DeepSpeed asked for by the launcher (accelerate's env or its config file)
    fsdp: bool = False
    deepspeed: bool = False
    launcher_source: str = ""
    #: `accelerate launch --mixed_precision` (or its config), when not "no"
    mixed_precision: str | None = None


def read_launcher(
    env: Mapping[str, str] | None = None, parent_argv: Sequence[str] | None = None
) -> LauncherRequest:
    """The launcher's request, from the environment and, under `accelerate launch`'s one-process
    launcher, from its command line and config file (it passes neither on to the process)."""
    env = os.environ if env is None else env
    processes: int | None = None
    source = ""
    fsdp = env.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    launcher_source = (
        "the launcher's environment (ACCELERATE_USE_FSDP/ACCELERATE_USE_DEEPSPEED)"
        if fsdp or deepspeed
        else ""
    )
    precision = env.get("ACCELERATE_MIXED_PRECISION", "").lower() or None
    if "WORLD_SIZE" in env:
        processes, source = _int(env["WORLD_SIZE"]), "WORLD_SIZE"
    elif _int(env.get("SLURM_STEP_NUM_TASKS", "")) and "SLURM_PROCID" in env:
        tasks = _int(env["SLURM_STEP_NUM_TASKS"])
        if tasks and tasks > 1:
            processes, source = tasks, "srun (SLURM_STEP_NUM_TASKS)"
    if "ACCELERATE_USE_CPU" in env:  # only accelerate's one-process launcher sets it
        argv = _parent_argv() if parent_argv is None else list(parent_argv)
        asked = _accelerate_launch_request(argv)
        if asked is not None:
            n, use_fsdp, use_deepspeed, config_precision, where = asked
            if n and n > 1 and (processes is None or processes < n):
                processes, source = n, where
            fsdp, deepspeed = fsdp or use_fsdp, deepspeed or use_deepspeed
            if use_fsdp or use_deepspeed:
                launcher_source = where
            precision = precision or config_precision
        elif "MASTER_PORT" in env and processes is None:
            # it sets MASTER_ADDR/PORT only when asked for more than one process
            processes, source = 2, "accelerate launch (--num_processes > 1)"
    if precision == "no":
        precision = None
    return LauncherRequest(processes, source, fsdp, deepspeed, launcher_source, precision)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _parent_argv() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _accelerate_launch_request(
    argv: Sequence[str],
) -> tuple[int | None, bool, bool, str | None, str] | None:
    """(processes, fsdp, deepspeed, mixed precision, where) from an `accelerate launch` command
    line and the config file it used, read with accelerate's own parser and config classes."""
    rest: list[str] | None = None
    for i, part in enumerate(argv):
        if part.endswith("accelerate.commands.launch") or (
            part == "launch" and i > 0 and Path(argv[i - 1]).name.startswith("accelerate")
        ):
            rest = list(argv[i + 1 :])
            break
    if rest is None:
        return None
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        args, _ = launch_command_parser().parse_known_args(rest)
    except (ImportError, SystemExit):
        return None
    where = f"accelerate launch ({shlex.join(rest[:8])}{' ...' if len(rest) > 8 else ''})"
    processes = args.num_processes
    fsdp, deepspeed = bool(args.use_fsdp), bool(args.use_deepspeed)
    precision = args.mixed_precision
    config_file = args.config_file or (
        default_config_file if Path(default_config_file).is_file() else None
    )
    if config_file:
        try:
            config = load_config_from_file(config_file)
        except Exception:  # an unreadable config is accelerate's to report
            config = None
        if config is not None:
            where = f"{where} with config {config_file}"
            processes = processes or getattr(config, "num_processes", None)
            kind = str(getattr(config, "distributed_type", "")).rsplit(".", 1)[-1]
            fsdp = fsdp or kind == "FSDP"
            deepspeed = deepspeed or kind == "DEEPSPEED"
            precision = precision or str(getattr(config, "mixed_precision", "") or "")
    return processes, fsdp, deepspeed, (precision or None), where


# --------------------------------------------------------------------------- recipe → accelerate


@dataclass(frozen=True)
class RecipeRequest:
    fsdp: FsdpRequest | None
    deepspeed: DeepSpeedRequest | None


def recipe_request(training: TrainingConfig) -> RecipeRequest:
    """FSDP / DeepSpeed as the recipe asks (checked when it loaded; re-read here)."""
    from cpo_cli.recipe.distributed import parse_deepspeed, parse_fsdp

    errors: list[str] = []
    request = RecipeRequest(parse_fsdp(training, errors), parse_deepspeed(training, errors))
    if errors:
        raise RecipeError("recipe", errors)
    return request


def check_launcher_conflicts(recipe: RecipeRequest, launcher: LauncherRequest) -> None:
    """FSDP or DeepSpeed configured by both the recipe and the launcher: one must go."""
    problems = []
    asked = [
        (name, field_name, getattr(recipe, field_name) is not None)
        for name, field_name in (("FSDP", "fsdp"), ("DeepSpeed", "deepspeed"))
    ]
    for name, field_name, in_recipe in asked:
        for other, launcher_has in (("FSDP", launcher.fsdp), ("DeepSpeed", launcher.deepspeed)):
            if in_recipe and launcher_has:
                same = "also" if other == name else "instead"
                problems.append(
                    f"training.{field_name} asks for {name}, and {launcher.launcher_source} "
                    f"{same} asks for {other}; configure it in one place: remove "
                    f"training.{field_name} or launch without the {other} config"
                )
    if problems:
        raise RecipeError("recipe", problems)


def fsdp_plugin(request: FsdpRequest) -> Any:
    from accelerate.utils import FullyShardedDataParallelPlugin

    kwargs: dict[str, Any] = {
        "fsdp_version": request.version,
        "state_dict_type": request.state_dict_type,
        "cpu_offload": request.offload,
        "activation_checkpointing": request.activation_checkpointing,
        "cpu_ram_efficient_loading": request.cpu_ram_efficient_loading,
    }
    if request.version == 2:
        kwargs["reshard_after_forward"] = request.reshard_after_forward
    else:
        kwargs["sharding_strategy"] = request.sharding.upper()
        kwargs.update(request.fsdp1_options)
    if request.min_num_params:
        kwargs["auto_wrap_policy"] = "size_based_wrap"
        kwargs["min_num_params"] = request.min_num_params
    elif request.auto_wrap:
        kwargs["auto_wrap_policy"] = "transformer_based_wrap"
        if request.layer_classes:
            kwargs["transformer_cls_names_to_wrap"] = list(request.layer_classes)
    else:
        kwargs["auto_wrap_policy"] = "no_wrap"
    return FullyShardedDataParallelPlugin(**kwargs)


def deepspeed_config(request: DeepSpeedRequest, training: TrainingConfig) -> dict[str, Any]:
    """The DeepSpeed config with every "auto" that cpo owns filled in from the recipe."""
    import copy

    config = copy.deepcopy(request.config)
    config["train_micro_batch_size_per_gpu"] = training.per_device_train_batch_size
    config["gradient_accumulation_steps"] = training.gradient_accumulation_steps
    config["gradient_clipping"] = training.max_grad_norm if training.max_grad_norm > 0 else 0.0
    # cpo builds the optimizer itself (training.optim): DeepSpeed accepts one it does not ship
    # only with this set, as HF Trainer sets it for the same reason
    config.setdefault("zero_allow_untested_optimizer", True)
    zero = config.setdefault("zero_optimization", {})
    zero.setdefault("stage", request.stage)
    if request.stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") in (
        None,
        "auto",
    ):
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    for section, on in (("bf16", training.bf16), ("fp16", training.fp16)):
        if section in config or on:
            config.setdefault(section, {})["enabled"] = bool(on)
    return config


def deepspeed_plugin(request: DeepSpeedRequest, training: TrainingConfig) -> Any:
    from accelerate.utils import DeepSpeedPlugin

    _require_deepspeed(request.source)
    return DeepSpeedPlugin(
        hf_ds_config=deepspeed_config(request, training), zero3_init_flag=request.stage == 3
    )


def launcher_deepspeed_plugin(training: TrainingConfig) -> Any:
    """DeepSpeed as the launcher's accelerate config asks for it, with the values cpo owns
    (micro-batch, accumulation, clipping, precision) checked against the recipe and filled in:
    left to accelerate, an "auto" clipping would become 1.0 and an accumulation from the
    config would silently replace the recipe's."""
    from accelerate.utils import DeepSpeedPlugin

    from cpo_cli.recipe.distributed import DeepSpeedRequest, check_deepspeed_config

    _require_deepspeed("the launcher's accelerate config")
    plugin = DeepSpeedPlugin()  # what accelerate builds from the launcher's settings
    config = plugin.deepspeed_config
    errors: list[str] = []
    where = "the accelerate config's DeepSpeed settings (deepspeed_config)"
    stage = check_deepspeed_config(config, training, where, errors)
    if errors:
        raise RecipeError("recipe", errors)
    filled = deepspeed_config(DeepSpeedRequest(config, where, stage), training)
    # in place: accelerate reads this very mapping when it prepares the engine (a new plugin
    # would trip its check against mixing an accelerate config with a DeepSpeed file)
    config.clear()
    config.update(filled)
    plugin.gradient_accumulation_steps = filled["gradient_accumulation_steps"]
    plugin.gradient_clipping = filled["gradient_clipping"]
    return plugin


def _require_deepspeed(who: str) -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        from cpo_cli.errors import DependencyMissingError

        raise DependencyMissingError(
            f"{who} asks for DeepSpeed but the deepspeed package is not installed",
            hint="pip install deepspeed (or pip install 'cpo-cli[deepspeed]')",
        ) from exc


def kwargs_handlers(training: TrainingConfig) -> list[Any]:
    """The process group's backend/timeout and DDP's options, as accelerate takes them."""
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    group: dict[str, Any] = {"timeout": timedelta(seconds=training.ddp_timeout)}
    if training.ddp_backend is not None:
        group["backend"] = training.ddp_backend
    ddp: dict[str, Any] = {}
    if training.ddp_find_unused_parameters is not None:
        ddp["find_unused_parameters"] = training.ddp_find_unused_parameters
    if training.ddp_bucket_cap_mb is not None:
        ddp["bucket_cap_mb"] = training.ddp_bucket_cap_mb
    if training.ddp_broadcast_buffers is not None:
        ddp["broadcast_buffers"] = training.ddp_broadcast_buffers
    handlers: list[Any] = [InitProcessGroupKwargs(**group)]
    if ddp:
        handlers.append(DistributedDataParallelKwargs(**ddp))
    return handlers


def build_accelerator(training: TrainingConfig) -> tuple[Any, LauncherRequest, RecipeRequest]:
    """The Accelerator for this recipe and launch: mixed precision from bf16/fp16 (fp32 on a CPU
    unless asked), accumulation, FSDP/DeepSpeed/DDP settings, seeds."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration, set_seed

    launcher = read_launcher()
    request = recipe_request(training)
    check_launcher_conflicts(request, launcher)
    precision = "bf16" if training.bf16 else "fp16" if training.fp16 else "no"
    options: dict[str, Any] = {"kwargs_handlers": kwargs_handlers(training)}
    if request.fsdp is not None:
        options["fsdp_plugin"] = fsdp_plugin(request.fsdp)
    if request.deepspeed is not None:
        options["deepspeed_plugin"] = deepspeed_plugin(request.deepspeed, training)
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        options["deepspeed_plugin"] = launcher_deepspeed_plugin(training)

    # accelerate keeps its settings in process-wide singletons: a second run in the same
    # process (a notebook, the tests, `cpo eval` after training) must be free to pick another
    # precision, accumulation or plugin. The process group itself (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # a plugin passed in is written to the environment as if the launcher had asked for it;
    # keep the launcher's own values so that a later run in this process starts clean
    saved = {k: os.environ.get(k) for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")}
    try:
        accelerator = Accelerator(
            mixed_precision=precision,
            project_config=ProjectConfiguration(save_on_each_node=training.save_on_each_node),
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            # on a machine without an accelerator, say so: accelerate only forms a
            # multi-process CPU group (torchrun, mpirun) when told it runs on the CPU
            cpu=training.use_cpu or not _has_accelerator_device(),
            **options,
        )
    except ValueError as exc:  # e.g. fp16 where this hardware has no fp16 mixed precision
        field_name = precision if precision != "no" else "use_cpu"
        raise RecipeError("recipe", [f"training.{field_name}: {exc}"]) from exc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    set_seed(training.seed, deterministic=training.full_determinism)
    return accelerator, launcher, request


def _has_accelerator_device() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def reshard(model: Any) -> None:
    """Free the parameters FSDP2 keeps gathered after a forward without a backward (the layout
    probe, evaluation). accelerate does not reshard the root and the final-norm/LM-head unit
    after their forward (they are needed again at the start of the backward); left gathered,
    they break loading a FULL_STATE_DICT checkpoint ("mixed torch.Tensor and DTensor")."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# --------------------------------------------------------------------------- what runs


@dataclass(frozen=True)
class RunShape:
    """What actually runs, as the start-up line states it."""

    processes: int
    machines: int
    mode: str
    #: FSDP or ZeRO-3: no process holds whole parameters outside the framework's calls
    sharded_parameters: bool
    mixed_precision: str
    per_device_batch: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.accumulation * self.processes

    def line(self) -> str:
        machines = f" on {self.machines} machine{'s' if self.machines != 1 else ''}"
        procs = f"{self.processes} process{'es' if self.processes != 1 else ''}{machines}"
        batch = f"{self.per_device_batch} pairs/device x {self.accumulation} accumulation"
        if self.processes > 1:
            batch += f" x {self.processes} processes"
        return (
            f"run: {procs} | {self.mode} | mixed precision: {self.mixed_precision} | batch: "
            f"{batch} = {self.global_batch} pairs per optimizer step"
        )


def distributed_mode(accelerator: Any) -> tuple[str, bool]:
    """(the mode in words, whether parameters are sharded) of a built Accelerator."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        version = int(getattr(plugin, "fsdp_version", 1))
        if version == 2:
            sharding = "full shard" if plugin.reshard_after_forward else "shard grad op"
        else:
            sharding = str(plugin.sharding_strategy).rsplit(".", 1)[-1].lower().replace("_", " ")
        offload = ", CPU offload" if _offloads(plugin) else ""
        state = str(plugin.state_dict_type).rsplit(".", 1)[-1]
        return f"FSDP{version} ({sharding}{offload}; {state} checkpoints)", True
    if kind == DistributedType.DEEPSPEED:
        stage = int(accelerator.state.deepspeed_plugin.zero_stage)
        return f"DeepSpeed ZeRO-{stage}", stage == 3
    if accelerator.num_processes > 1:
        return f"DDP ({_backend()})", False
    return f"single process ({accelerator.device})", False


def _offloads(plugin: Any) -> bool:
    """FSDP2 keeps an `OffloadPolicy` (a `CPUOffloadPolicy` when offloading), FSDP1 a
    `CPUOffload(offload_params=...)`."""
    offload = getattr(plugin, "cpu_offload", None)
    if offload is None or isinstance(offload, bool):
        return bool(offload)
    if hasattr(offload, "offload_params"):
        return bool(offload.offload_params)
    return type(offload).__name__ == "CPUOffloadPolicy"


def _backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "?"


def run_shape(accelerator: Any, training: TrainingConfig, plan: Plan, machines: int) -> RunShape:
    mode, sharded = distributed_mode(accelerator)
    return RunShape(
        processes=accelerator.num_processes,
        machines=machines,
        mode=mode,
        sharded_parameters=sharded,
        mixed_precision=_precision(accelerator, training),
        per_device_batch=training.per_device_train_batch_size,
        accumulation=plan.accumulation,
    )


def _precision(accelerator: Any, training: TrainingConfig) -> str:
    # DeepSpeed keeps accelerate's own setting at "no" and runs the precision of its config
    if training.bf16:
        return "bf16"
    if training.fp16:
        return "fp16"
    return str(accelerator.mixed_precision)


def count_machines(accelerator: Any) -> int:
    """Machines in the job: torchrun's node count when it gives one, else distinct hosts."""
    from cpo_cli.engine.ranks import gather_objects, this_host

    nodes = _int(os.environ.get("GROUP_WORLD_SIZE", ""))
    hosts = gather_objects(accelerator, this_host())
    return nodes if nodes else len(set(hosts))


def launch_warnings(shape: RunShape, launcher: LauncherRequest, recipe: RecipeRequest) -> list[str]:
    """What the user asked for and did not get."""
    out: list[str] = []
    if launcher.processes and launcher.processes > shape.processes:
        out.append(
            f"{launcher.processes_source} asked for {launcher.processes} processes but "
            f"{shape.processes} started. On a machine without GPUs `accelerate launch` starts "
            "one process (more only through mpirun); start several CPU processes with "
            f"`torchrun --nproc_per_node {launcher.processes} -m cpo_cli train ...` "
            "(docs/distributed.md)"
        )
    wanted = []
    if recipe.fsdp is not None or launcher.fsdp:
        wanted.append(("FSDP", "training.fsdp" if recipe.fsdp else launcher.launcher_source))
    if recipe.deepspeed is not None or launcher.deepspeed:
        who = "training.deepspeed" if recipe.deepspeed else launcher.launcher_source
        wanted.append(("DeepSpeed", who))
    for name, who in wanted:
        if not shape.mode.startswith(name):
            out.append(
                f"{name} was asked for (by {who}) but this run is {shape.mode}: accelerate "
                f"turns {name} on only with accelerator devices (GPUs), so nothing is sharded"
            )
    if launcher.mixed_precision and launcher.mixed_precision != shape.mixed_precision:
        out.append(
            f"the launcher asked for mixed precision {launcher.mixed_precision!r}, but cpo "
            f"takes it from the recipe and runs {shape.mixed_precision!r}; set "
            f"training.{launcher.mixed_precision}: true to use it"
        )
    return out


def cpu_half_precision_support() -> dict[str, bool | None]:
    """Whether this CPU multiplies bf16/fp16 natively (oneDNN's own check: AVX512-BF16, AMX,
    AVX512-FP16); None where torch cannot say."""
    import torch

    checks = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}
    out: dict[str, bool | None] = {}
    for precision, name in checks.items():
        try:
            out[precision] = bool(getattr(torch.ops.mkldnn, name)())
        except (AttributeError, RuntimeError):
            out[precision] = None
    return out


def cpu_precision_warning(mixed_precision: str, native: dict[str, bool | None]) -> str | None:
    """A CPU without native bf16/fp16 matmul runs them through a slow fallback, tens of times
    slower than fp32 (measured here: ~1.3 against ~76 GFLOP/s per core): say so at start-up."""
    if native.get(mixed_precision) is not False:
        return None
    return (
        f"training.{mixed_precision} is on, but this CPU has no native {mixed_precision} matrix "
        "multiply (it needs AVX512-BF16/AMX or AVX512-FP16): torch falls back to a path tens "
        f"of times slower than fp32. Set training.{mixed_precision}: false on this machine"
    )
