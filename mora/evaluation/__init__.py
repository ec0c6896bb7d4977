"""Metrics computed on a trained model: UUID character accuracy (more evaluators join per task)."""
