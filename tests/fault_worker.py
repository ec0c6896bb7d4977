"""`python -m mora.train`, made to die by SIGKILL at a chosen point (tests/test_faults_slow.py).

    python tests/fault_worker.py step:N OVERRIDES...   # right after optimizer step N
    python tests/fault_worker.py save:N OVERRIDES...   # while writing checkpoint-N: its weights are on
                                                       # disk, its optimizer state is cut short, no marker
    python tests/fault_worker.py none OVERRIDES...     # no fault: runs to the end

The process kills itself with SIGKILL, as the OOM killer or a node failure would: no handler, no
cleanup, no flush; only the exact point is chosen.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    kind, _, step = fault.partition(":")
    if kind == "none":
        return
    if kind == "step":
        from mora.training.callbacks import RunRecorder

        after_step = RunRecorder.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            out = after_step(self, args, state, control, **kwargs)
            if state.global_step == int(step):
                _die()
            return out

        RunRecorder.on_step_end = on_step_end
    elif kind == "save":
        from transformers import Trainer

        save_optimizer = Trainer._save_optimizer_and_scheduler

        def mid_save(self, output_dir):
            if Path(output_dir).name == f"checkpoint-{step}":
                with open(Path(output_dir) / "optimizer.pt", "wb") as handle:
                    handle.write(b"\x80\x02half")
                _die()
            return save_optimizer(self, output_dir)

        Trainer._save_optimizer_and_scheduler = mid_save
    else:
        raise SystemExit(f"unknown fault {fault!r}: step:N, save:N or none")


if __name__ == "__main__":
    import runpy

    install(sys.argv[1])
    sys.argv = [str(Path(__file__).resolve().parent.parent / "mora" / "train.py"), *sys.argv[2:]]
    runpy.run_module("mora.train", run_name="__main__", alter_sys=True)  # as `python -m mora.train` runs it
