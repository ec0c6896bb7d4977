"""Stale results (docs/results_store.md): a run recorded by older code is listed as stale by mora.launch
and mora.report, `--rerun-stale` trains exactly those again (the old record moved to .stale/, nothing
deleted); a store written under the old id scheme is read as stale and `python -m mora.runs migrate`
re-keys it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mora.launch import expand, main
from runner import TINY_RUN, compose

TINY_OVERRIDES = [arg for o in TINY_RUN[1:] for arg in ("--override", o)]
SPEC = """\
artifact: tinygrid
kind: table
title: "UUID miniature"
metric: char_acc
select: {metric: char_acc, mode: max}
mini:
  experiment: uuid_mini
  seeds: [0]
  columns: [3, 6]
  rows:
    - {label: LoRA r=4, overrides: [method=lora, method.r=4], lr_grid: [1e-2]}
    - {label: MoRA r=4, overrides: [method=mora, method.r=4, method.kind=rotation], lr_grid: [1e-2]}
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def launch(spec: Path, store: Path, *args: str) -> int:
    return main([str(spec), "--section", "mini", "--runs-dir", str(store), *TINY_OVERRIDES, *args])


def train_cells(store: Path, cells) -> None:
    from mora.train import train

    for cell in cells:
        train(compose([*cell.overrides, f"paths.runs_dir={store}"]))


def test_a_results_version_bump_lists_the_run_as_stale_and_rerun_stale_trains_only_it(tmp_path, spec, capsys, monkeypatch):
    store = tmp_path / "runs"
    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    train_cells(store, cells)
    lora, mora = (Path(c.path) for c in cells)
    assert [c.status for c in expand(spec, ["mini"], store, TINY_RUN[1:])] == ["completed", "completed"]

    # A fix to LoRA's layer bumps its version: the LoRA run is stale, the MoRA run is not.
    from mora.adapters.lora import LoRAConfig

    monkeypatch.setattr(LoRAConfig, "version", LoRAConfig.version + 1)
    assert launch(spec, store, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"skip    {cells[0].label}  [stale (completed): made by older code: method.lora 1 -> 2]  {lora}" in out
    assert f"skip    {cells[1].label}  [finished]  {mora}" in out
    assert "1 stale: skipped 2; launching 0" in out and "--rerun-stale" in out
    from mora.report import render

    table = render(spec, store, tmp_path / "reports", ["mini"], TINY_RUN[1:], wandb_log=False)
    assert "†" in table["markdown"].split("\n")[4] and "†" not in table["markdown"].split("\n")[5]
    assert f"{lora}: made by older code: method.lora 1 -> 2" in table["markdown"]
    monkeypatch.undo()

    # The same, as a process that really runs older code would see it: its record says version 0.
    record = json.loads((lora / "metrics.json").read_text())
    record["results_versions"]["method.lora"] = 0
    (lora / "metrics.json").write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in mora.rglob("*") if p.is_file()}
    assert launch(spec, store, "--rerun-stale") == 0
    out = capsys.readouterr().out
    assert "launching 1" in out and "launched 1 runs" in out and "1 finished, 0 not" in out, out
    (launch_dir,) = (store / ".launch").iterdir()
    (line,) = (launch_dir / "manifest.txt").read_text().splitlines()
    assert "method=lora" in line
    fresh = json.loads((lora / "metrics.json").read_text())
    assert fresh["status"] == "completed" and fresh["results_versions"]["method.lora"] == 1
    (aside,) = (store / "uuid_mini" / ".stale").iterdir()
    assert aside.name.startswith(lora.name) and json.loads((aside / "metrics.json").read_text()) == record
    assert {p: p.read_bytes() for p in mora.rglob("*") if p.is_file()} == before  # not touched
    assert [c.status for c in expand(spec, ["mini"], store, TINY_RUN[1:])] == ["completed", "completed"]


# The id function before id scheme 2, reproduced: the resolved config less a list of dotted keys,
# hashed as written (so ${paths.cache_dir} inside data.builder, 4 vs 4.0, ... all counted).
OLD_NON_SEMANTIC = ("paths", "logger", "launcher", "artifact", "benchmark", "threads", "train.save_every",
                    "train.save_total_limit", "train.log_every", "train.progress_bar", "train.keep_checkpoints",
                    "eval.metric.batch_size")


def old_run_id(config: dict) -> str:
    out = json.loads(json.dumps(config))
    for dotted in OLD_NON_SEMANTIC:
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    canonical = json.dumps(out, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_old_run(store: Path, overrides: list[str], char_acc: float) -> Path:
    """A finished run as the old code stored it: config.json, metrics.json without id scheme or versions."""
    config = OmegaConf.to_container(compose(overrides), resolve=True)
    config["method"]["fp32"] = False  # an option the old configs had, retired since
    run = store / config["experiment_name"] / old_run_id(config)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "train.log").write_text("trained by the old code\n")
    evals = [{"step": 3, "char_acc": char_acc / 2}, {"step": 6, "char_acc": char_acc}]
    (run / "metrics.json").write_text(json.dumps({"run_id": run.name, "status": "completed", "evals": evals,
                                                  "final": evals[-1]}))
    return run


def test_an_old_scheme_store_is_read_as_stale_and_migrate_rekeys_it(tmp_path, spec, capsys):
    from mora.report import render
    from mora.runs import main as runs_main

    store = tmp_path / "runs"
    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    old = [write_old_run(store, [*c.overrides, f"paths.runs_dir={store}"], acc) for c, acc in zip(cells, (40.0, 60.0))]
    assert all(o.name != c.run_id for o, c in zip(old, cells))
    files = sorted(p.relative_to(store).parts[1:] for p in store.rglob("*") if p.is_file())

    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert [c.status for c in cells] == ["stale", "stale"]
    assert all(c.detail.startswith(f"old id scheme: stale: {o}") for c, o in zip(cells, old))
    table = render(spec, store, tmp_path / "reports", ["mini"], TINY_RUN[1:], wandb_log=False)["markdown"]
    assert "| 20.0† | 40.0† |" in table and "| 30.0† | 60.0† |" in table
    assert f"{old[0]}: old id scheme: stale" in table
    assert launch(spec, store, "--dry-run") == 0
    assert "2 stale: skipped 2; launching 0" in capsys.readouterr().out

    # A dry run says what it would do and does nothing.
    assert runs_main(["migrate", str(store), "--dry-run"]) == 0
    assert "dry run: 2 re-keyed" in capsys.readouterr().out and all(o.is_dir() for o in old)

    assert runs_main(["migrate", str(store)]) == 0
    out = capsys.readouterr().out
    for o, c in zip(old, cells):
        assert f"moved   {o} -> {c.path}  (stale until trained again" in out
        assert not o.exists()
        metrics = json.loads((Path(c.path) / "metrics.json").read_text())
        assert metrics["run_id"] == c.run_id and metrics["migrated_from"]["run_id"] == o.name
    assert "2 re-keyed, 0 left in place, 0 already under id scheme 2" in out
    # nothing lost: the same files under the new names, plus what the migration wrote
    after = sorted(p.relative_to(store).parts[1:] for p in store.rglob("*") if p.is_file())
    assert [f for f in after if f[-1] not in ("identity.json", ".lock")] == sorted(
        (c.run_id, *f[1:]) for f in files for c, o in zip(cells, old) if f[0] == o.name)

    # Migrated runs are found under their new id; the code that made them is unknown, so they stay stale
    # until trained again, or until the user vouches for them.
    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert [c.detail for c in cells] == ["stale (completed): made before results versions were recorded"] * 2
    write_old_run(store, [*cells[0].overrides, f"paths.runs_dir={store}"], 10.0)  # the same run again, old scheme
    assert runs_main(["migrate", str(store), "--assume-current"]) == 0
    out = capsys.readouterr().out
    assert "exists already" in out and "0 re-keyed, 1 left in place, 2 already under id scheme 2" in out
    for c in cells:  # --assume-current stamps only runs it moves
        record = json.loads((Path(c.path) / "metrics.json").read_text())
        record["results_versions"] = c.versions
        (Path(c.path) / "metrics.json").write_text(json.dumps(record))
    assert [c.status for c in expand(spec, ["mini"], store, TINY_RUN[1:])] == ["completed", "completed"]


def test_migrate_assume_current_stamps_the_versions(tmp_path, spec, capsys):
    from mora.runs import main as runs_main

    store = tmp_path / "runs"
    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    write_old_run(store, [*cells[0].overrides, f"paths.runs_dir={store}"], 50.0)
    assert runs_main(["migrate", str(store), "--assume-current"]) == 0
    assert "(versions assumed current)" in capsys.readouterr().out
    assert [c.status for c in expand(spec, ["mini"], store, TINY_RUN[1:])] == ["completed", "missing"]
