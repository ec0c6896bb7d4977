"""Trainer wiring: optimizer factory (LoRA+ groups), schedules (jagged re-warm after restarts) and the
callbacks that carry method behaviour (restarts), evaluation at fixed steps and the results store."""

# Bump when the training loop (optimizer, schedules, restarts, precision handling, the Trainer wiring)
# changes what a run computes: the runs made before are then listed as stale (docs/results_store.md).
RESULTS_VERSION = 1
