"""Stop at the first NaN or infinite loss, before its gradients reach the weights or a checkpoint.

The HF Trainer hides such a loss (`logging_nan_inf_filter` averages it away in the logs) and keeps
stepping on NaN gradients, so every later checkpoint would hold NaN weights. Here the loss of each
micro-batch is checked right after its backward pass, before the optimizer step: the run stops with
an error naming the step, and the weights and the checkpoints on disk are those of the last good step.
"""

from __future__ import annotations

import math
from pathlib import Path

from .callbacks import last_complete_checkpoint
from .distributed import agreed_max


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; mora.train records the run as failed."""


def _nonfinite_anywhere(value: float) -> bool:
    """True if this process's loss, or any other process's, is not finite (all processes agree, so
    all of them stop together instead of the healthy ones waiting forever in the next collective)."""
    return agreed_max(int(not math.isfinite(value))) > 0


def stopping_on_nonfinite_loss(trainer_cls):
    """A Trainer subclass whose training step raises NonFiniteLossError on a NaN/inf loss."""

    class StopOnNonFiniteLoss(trainer_cls):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            value = loss.detach().float().sum().item()
            if _nonfinite_anywhere(value):
                step = self.state.global_step + 1
                kept = last_complete_checkpoint(Path(self.args.output_dir))
                raise NonFiniteLossError(
                    f"training loss is {value if not math.isfinite(value) else 'not finite on another process'} "
                    f"at step {step}; stopped before the optimizer step, so no weight or checkpoint took it "
                    f"(last good checkpoint: {kept.name if kept else 'none yet'}). Lower train.lr, add "
                    "train.warmup_steps, or use train.precision=fp32"
                )
            return loss

    StopOnNonFiniteLoss.__name__ = StopOnNonFiniteLoss.__qualname__ = f"{trainer_cls.__name__}StoppingOnNonFiniteLoss"
    return StopOnNonFiniteLoss
