"""Rendering a built table (mora.artifacts.table.Table): Markdown, CSV and LaTeX text, figures (PNG),
and wandb tables. Nothing here reads the store or composes a config."""
