"""Stop cleanly when the cluster asks: preemption, time limit, `scancel --signal=TERM`.

On SIGTERM (and, inside a submitit job, submitit's preemption signal, SIGUSR2 unless
$SUBMITIT_PREEMPT_SIGNAL says otherwise) the run finishes the optimizer step it is in, logs, saves a
complete checkpoint and stops; `mora.train` records the run as `interrupted` and then

- outside submitit exits with status 75 (EX_TEMPFAIL): slurm/array.sbatch requeues the task on that
  status (`scontrol requeue`), and the relaunched task resumes from the checkpoint;
- inside submitit hands the signal to submitit's own handler, which re-submits the same call
  (hydra-submitit-launcher's `checkpoint`) and requeues the job.

Either way nothing is lost beyond the step in flight, and a run resumed this way ends with the
metrics of one that never stopped (tests/test_slurm.py checks it on a real Slurm).

Several processes (torchrun, the deepspeed launcher) stop together: a signal that reaches one of
them, or reaches them at different steps, stops all at the end of the same step (they agree on it at
every step's end), every rank writes its part of the checkpoint, and each exits once rank 0 has
recorded the run. torchrun forwards a SIGTERM it gets to its workers and kills them
`--shutdown-timeout` seconds later (default 30): the step in flight and the checkpoint must fit in
that, else signal the workers themselves (tests/test_deepspeed.py sends SIGTERM to one rank).

Ctrl-C (SIGINT) stops the same way, but for good: exit status 130 and no requeue; the same command
run again resumes. A second Ctrl-C stops at once (KeyboardInterrupt); `mora.train` then deletes the
checkpoint it may have cut short, so a relaunch resumes from the last complete one
(tests/test_faults.py checks both).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

from transformers import TrainerCallback

from .distributed import agreed_max, barrier

log = logging.getLogger("mora")

STATUS_INTERRUPTED = "interrupted"  # metrics.json status of a run stopped by a signal (relaunch resumes it)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: "try again later"; slurm/array.sbatch requeues a task that exits with it
EXIT_CTRL_C = 128 + signal.SIGINT  # what a shell reports for a program Ctrl-C stopped: not requeued


def _submitit_signal() -> signal.Signals | None:
    """The preemption signal of the submitit job this process runs in, if it runs in one."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)


class RunInterrupted(BaseException):
    """Training stopped on a signal after saving a checkpoint. A BaseException (like
    KeyboardInterrupt): a sweep must not carry on with its next job as if this one had failed."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")

    @property
    def by_user(self) -> bool:
        """Ctrl-C: the user stopped the run; nothing is requeued."""
        return self.signum == signal.SIGINT

    def exit(self) -> None:
        """Leave the process so that the job comes back: submitit's requeue, else exit status 75; after
        Ctrl-C, exit status 130 and no requeue."""
        barrier()  # several processes: none leaves (and makes its launcher stop the rest) before rank 0 has
        # recorded the run as interrupted
        if self.by_user:
            sys.exit(EXIT_CTRL_C)
        sig = _submitit_signal()
        handler = signal.getsignal(sig) if sig is not None else None
        if callable(handler):
            log.info("handing %s over to submitit: it re-submits this call and requeues the job", sig.name)
            handler(sig, None)  # checkpoints the launcher call, `scontrol requeue`, sys.exit
        sys.exit(EXIT_REQUEUE)


class GracefulStop(TrainerCallback):
    """Turns a stop signal into "save a checkpoint at the end of this step, then stop training"."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    def signals(self) -> list[int]:
        out = [signal.SIGTERM, signal.SIGINT]
        sig = _submitit_signal()
        if sig is not None and sig not in out:
            out.append(sig)
        return out

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            again = " (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""
            log.warning(
                "caught %s: saving a checkpoint at the end of this step, then stopping%s", signal.Signals(signum).name, again
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt("a second Ctrl-C stopped it at once")

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        """Catch the stop signals while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in self.signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        # Several processes stop together: a signal may reach one rank only (or ranks at different
        # steps), and a rank that saved and left while the others went on into the next step's
        # collectives would hang them all. Every step, all agree on the strongest signal any has seen.
        agreed = agreed_max(self.received or 0)
        if agreed and self.received is None:
            self.received = agreed
            log.warning("another process caught %s: saving a checkpoint at the end of this step, then stopping",
                        signal.Signals(agreed).name)
        if self.received is not None and self.stopped_at is None and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_log = True  # the loss since the last log is not lost
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_stopped(self, checkpoints_dir) -> None:
        """After `trainer.train()`: raise RunInterrupted if the signal cut training short."""
        if self.stopped_at is None:
            return
        checkpoint = os.path.join(str(checkpoints_dir), f"checkpoint-{self.stopped_at}")
        raise RunInterrupted(self.received, self.stopped_at, checkpoint)
