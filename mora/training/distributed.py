"""Running one config on N processes: launcher arguments, ranks, the DeepSpeed config check, and the
Trainer that keeps the run's own optimizer and schedule under DeepSpeed.

The same command line works under every launcher:

    python -m mora.train experiment=X train/deepspeed=zero2                              # 1 process
    torchrun --nproc_per_node 2 -m mora.train experiment=X train/deepspeed=zero2          # 2 processes
    deepspeed --num_gpus 2 --module mora.train experiment=X train/deepspeed=zero2         # same, DS launcher
"""

from __future__ import annotations

import os
import socket
from typing import Any

# What launchers add to the script's own arguments: `deepspeed` appends `--local_rank=N`,
# torch.distributed.launch `--local-rank=N`; Hydra would reject both as unknown overrides.
LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")
# Keys of a DeepSpeed config the HF Trainer derives from TrainingArguments (i.e. from the Hydra config).
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """`argv` without the launchers' `--local_rank=N` / `--local_rank N`; the rank goes to LOCAL_RANK."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in LOCAL_RANK_FLAGS:
            if not eq and i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            os.environ.setdefault("LOCAL_RANK", value)
        else:
            out.append(arg)
        i += 1
    return out


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 writes the run's record (config, metrics, log, adapter, merged model); others only train."""
    return rank() == 0


def several_processes() -> bool:
    """A process group of more than one process is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if several_processes():
        dist.barrier()


def collective_device():
    """Where a tensor must live for the process group's collectives: the process's GPU under NCCL,
    else the CPU (gloo)."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agreed_max(value: int) -> int:
    """The largest `value` over all processes (one small all-reduce; the value itself alone)."""
    import torch
    import torch.distributed as dist

    if not several_processes():
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_ranks(value: Any) -> list[Any]:
    """`value` of every process, in rank order ([value] for one process)."""
    import torch.distributed as dist

    if not several_processes():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def shutdown() -> None:
    """Take the process group down before the interpreter exits. Left to interpreter teardown, the
    gloo / store threads can be destroyed while still joinable, and a run that finished cleanly then
    dies with SIGABRT ("terminate called without an active exception"), failing its whole launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ensure_single_process_env() -> None:
    """DeepSpeed without a launcher tries MPI and crashes: describe a world of one process instead."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(port))


def init_deepspeed_state() -> dict[str, Any]:
    """On a machine without GPUs, set up accelerate's shared process state for DeepSpeed over gloo;
    returns the extra TrainingArguments that make the Trainer use it.

    TrainingArguments(deepspeed=...) asks accelerate for a DeepSpeed state without naming a backend;
    with no GPU accelerate then finds none and counts one process, so every "auto" batch size comes
    out world-size times too small and each process would see the whole batch."""
    import torch

    if torch.cuda.is_available():
        return {}
    from accelerate import PartialState

    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    return {"accelerator_config": {"use_configured_state": True}}


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class _WithoutAcceleratorProbe:
    """Drops DeepSpeed's "Setting accelerator to CPU ..." record."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


def quiet_unused_deepspeed() -> None:
    """accelerate imports DeepSpeed whenever it is installed (to recognise a DeepSpeed engine), and on a
    machine without a GPU DeepSpeed then logs "Setting accelerator to CPU. If you have GPU ...": noise on
    a run that does not use DeepSpeed. Drop that one line (DeepSpeed's logger is named "DeepSpeed")."""
    import logging

    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _WithoutAcceleratorProbe) for f in logger.filters):
        logger.addFilter(_WithoutAcceleratorProbe())


def check_deepspeed_config(ds: Any, train_cfg, world: int, accumulation: int) -> dict:
    """Reject a DeepSpeed config that contradicts the Hydra config, naming the key and the fix.

    Batch keys, clipping and precision must be "auto" or equal to what the Hydra config gives; an
    `optimizer` or `scheduler` section is refused because it would silently replace the run's AdamW
    (and its parameter groups) or its schedule (and the restart re-warm)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ValueError(
            "train.deepspeed is set but DeepSpeed is not installed: pip install -e '.[deepspeed]' "
            "(or set train.deepspeed=null)"
        ) from None
    if not isinstance(ds, dict):
        raise ValueError(f"train.deepspeed must be a DeepSpeed config dict (e.g. train/deepspeed=zero2), got {ds!r}")
    for section, instead in (
        ("optimizer", "train.lr, train.adam_betas, train.adam_eps, train.weight_decay"),
        ("scheduler", "train.schedule, train.warmup_steps, train.min_lr_ratio"),
    ):
        if section in ds:
            raise ValueError(
                f"train.deepspeed.{section} would replace the run's own {section} (parameter groups such as "
                f"LoRA+ ratios, the ReLoRA/ReMoRA re-warm); remove it and set {instead} instead"
            )
    micro, batch = train_cfg.micro_batch_size, train_cfg.batch_size
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, f"train.micro_batch_size={micro}"),
        "gradient_accumulation_steps": (
            accumulation,
            f"train.batch_size={batch} / (train.micro_batch_size={micro} x {world} process(es)) = {accumulation}",
        ),
        "train_batch_size": (batch, f"train.batch_size={batch}"),
        "gradient_clipping": (train_cfg.max_grad_norm, f"train.max_grad_norm={train_cfg.max_grad_norm}"),
        "bf16.enabled": (train_cfg.precision == "bf16", f"train.precision={train_cfg.precision}"),
    }
    problems = []
    for key, (want, source) in wanted.items():
        have = _get(ds, key)
        if have is None or have == "auto":
            continue
        try:
            same = (float(have) == float(want)) if key != "bf16.enabled" else bool(have) == want
        except (TypeError, ValueError):
            same = False
        if not same:
            problems.append(f"train.deepspeed.{key}={have} contradicts {source}")
    if problems:
        raise ValueError(
            "the DeepSpeed config contradicts the Hydra config: " + "; ".join(problems)
            + ". Set those DeepSpeed keys to auto (the Trainer fills them from the Hydra config) or change "
            "the Hydra values"
        )
    if _get(ds, "fp16.enabled") not in (None, False, "auto"):
        raise ValueError("train.deepspeed.fp16 is not supported; use train.precision=bf16 (bf16.enabled: auto)")
    stage = _get(ds, "zero_optimization.stage")
    if stage is not None and stage not in (0, 1, 2, 3):
        raise ValueError(f"train.deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return ds


def keeping_optimizer(trainer_cls):
    """A Trainer subclass that hands the optimizer and scheduler passed as `optimizers=` to DeepSpeed.

    Under DeepSpeed the HF Trainer forgets them: `deepspeed_init` sets `trainer.optimizer = None` and
    calls `create_optimizer()` (a default AdamW over two groups), and the scheduler is then rebuilt by
    `create_scheduler()`. Here both return the run's own: DeepSpeed's ZeRO optimizer wraps that AdamW,
    keeping one flat partition per parameter group (so LoRA+ ratios survive), and the LambdaLR keeps
    scaling the same param_group dicts ZeRO reads its learning rates from. Each checkpoint's weights
    are written once, by DeepSpeed (`save_model`)."""

    class KeepOptimizer(trainer_cls):
        def __init__(self, *args, optimizers, **kwargs):
            super().__init__(*args, optimizers=optimizers, **kwargs)
            self._run_optimizer, self._run_scheduler = optimizers

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = self._run_optimizer
            return super().create_optimizer(model)

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = self._run_scheduler
            return super().create_scheduler(num_training_steps, optimizer)

        def save_model(self, output_dir=None, _internal_call=False):
            # A checkpoint's weights are in the DeepSpeed checkpoint written right after this call
            # (`_save_optimizer_and_scheduler`), which is all a resume reads. Left alone, the Trainer
            # first writes a 16-bit copy of the whole model here (ZeRO-1/2) or, under ZeRO-3 without
            # stage3_gather_16bit_weights_on_model_save, that same DeepSpeed checkpoint a first time:
            # a 7B FFT checkpoint (~95 GB) written twice. The run's model is saved by mora.train.
            if _internal_call:
                return None
            return super().save_model(output_dir, _internal_call)

    KeepOptimizer.__name__ = KeepOptimizer.__qualname__ = f"{trainer_cls.__name__}KeepingOptimizer"
    return KeepOptimizer
