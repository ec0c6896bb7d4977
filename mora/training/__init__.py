"""Trainer wiring: optimizer factory (LoRA+ groups), schedules (jagged re-warm after restarts) and the
callbacks that carry method behaviour (restarts), evaluation at fixed steps and the results store."""
