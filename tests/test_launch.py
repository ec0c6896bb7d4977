"""mora.launch without Slurm: grid expansion, skipping finished runs, bad specs, a real local launch,
the manifest sweeper, and the grid printed as Hydra multiruns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner import ROOT, TINY_RUN

from mora.identity import ID_SCHEME
from mora.launch import expand, main

TINY_OVERRIDES = [arg for o in TINY_RUN[1:] for arg in ("--override", o)]  # TINY_RUN[0] is experiment=
SPEC = """\
artifact: tinygrid
kind: table
title: "UUID miniature, 2 methods x 2 learning rates"
metric: char_acc
select: {metric: char_acc, mode: max}
mini:
  experiment: uuid_mini
  seeds: [0]
  columns: [3, 6]
  rows:
    - {label: LoRA r=4, overrides: [method=lora, method.r=4], lr_grid: [1e-2, 3e-2]}
    - {label: MoRA r=4, overrides: [method=mora, method.r=4, method.kind=rotation], lr_grid: [1e-2, 3e-2]}
"""


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def _fake_run(cell, status: str, **metrics) -> None:
    """A record as the current code writes it (id scheme, results versions), with `status`."""
    Path(cell.path).mkdir(parents=True, exist_ok=True)
    record = {"status": status, "evals": [], "id_scheme": ID_SCHEME, "results_versions": cell.versions, **metrics}
    (Path(cell.path) / "metrics.json").write_text(json.dumps(record))


def test_table2_paper_grid_matches_the_report(tmp_path):
    """Every cell the report would look for is a cell the launcher runs: same overrides, same run ids."""
    from mora.report import pending_commands

    cells = expand(ROOT / "experiments" / "table2.yaml", ["paper"], tmp_path)
    assert len(cells) == 1 + 3 + 3 + 3 + 3  # FFT 1 lr; LoRA / MoRA rows 3 lrs each
    assert len({c.run_id for c in cells}) == len(cells)
    assert all(c.status == "missing" for c in cells)
    commands = pending_commands(ROOT / "experiments" / "table2.yaml", tmp_path, ["paper"])
    assert sorted(commands) == sorted("python -m mora.train " + " ".join(c.overrides) for c in cells)
    lrs = sorted(c.extra["lr"] for c in cells if c.extra["row"] == "MoRA r=8")
    assert lrs == [5e-5, 1e-4, 2e-4]


def test_relaunch_skips_finished_and_relaunches_the_rest(tmp_path, capsys):
    spec = _spec(tmp_path)
    cells = expand(spec, ["mini"], tmp_path / "runs", TINY_RUN[1:])
    assert len(cells) == 4
    _fake_run(cells[0], "completed")
    _fake_run(cells[1], "failed")
    _fake_run(cells[2], "interrupted")
    rc = main([str(spec), "--section", "mini", "--runs-dir", str(tmp_path / "runs"), *TINY_OVERRIDES, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"skip    {cells[0].label}  [finished]  {cells[0].path}" in out
    for cell, why in ((cells[1], "failed"), (cells[2], "interrupted"), (cells[3], "not started")):
        assert f"launch  {cell.label}  [{why}]  {cell.path}" in out
    assert "skipped 1; launching 3" in out
    assert not (tmp_path / "runs" / ".launch").exists()  # a dry run writes nothing

    for cell in cells:
        _fake_run(cell, "completed")
    rc = main([str(spec), "--section", "mini", "--runs-dir", str(tmp_path / "runs"), *TINY_OVERRIDES])
    out = capsys.readouterr().out
    assert rc == 0 and "nothing to launch: submitted 0 jobs" in out and out.count("skip    ") == 4


def test_trained_but_unscored_runs_are_launched_again(tmp_path, capsys):
    """A run whose training finished but whose score the table reads is missing (its evaluation
    failed or was cut short) is launched again: mora.train skips training and scores it."""
    spec = _spec(tmp_path, SPEC.replace("columns: [3, 6]", "columns: [{key: acc, metric: char_acc}]"))
    cells = expand(spec, ["mini"], tmp_path / "runs", TINY_RUN[1:])
    assert all(c.scores == ["char_acc"] for c in cells)
    for cell in cells:
        _fake_run(cell, "completed")
    _fake_run(cells[0], "completed", final={"step": 6, "char_acc": 12.5})
    rc = main([str(spec), "--section", "mini", "--runs-dir", str(tmp_path / "runs"), *TINY_OVERRIDES, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped 1; launching 3" in out
    assert f"launch  {cells[1].label}  [trained, not scored: char_acc]" in out


@pytest.mark.parametrize(
    "change,message",
    [
        ("experiment: uuid_mini", r"unknown experiment 'uuid_nano'.*conf/experiment/"),
        ("method=lora, method.r=4]", r"LoRA r=4.*do not compose.*method/vera"),
        ("method.kind=rotation]", r"MoRA r=4.*not a valid run.*unknown kind 'spiral'"),
        ("lr_grid: [1e-2, 3e-2]}", r"unknown option.*'ranks'"),
        ("    - {label: MoRA r=4", r"LoRA lrr.*unknown config key train.lrr \(did you mean train.lr\?\).*fix the spec"),
    ],
)
def test_bad_spec_fails_before_anything_is_written(tmp_path, capsys, change, message):
    bad = {
        "experiment: uuid_mini": "experiment: uuid_nano",
        "method=lora, method.r=4]": "method=vera, method.r=4]",
        "method.kind=rotation]": "method.kind=spiral]",
        "lr_grid: [1e-2, 3e-2]}": "lr_grid: [1e-2, 3e-2]}\n    - {label: LoRA typo, overrides: [method=lora, +method.ranks=4]}",
        "    - {label: MoRA r=4": "    - {label: LoRA lrr, overrides: [method=lora, train.lrr=1e-3]}\n    - {label: MoRA r=4",
    }[change]
    spec = _spec(tmp_path, SPEC.replace(change, bad, 1))
    rc = main([str(spec), "--section", "mini", "--runs-dir", str(tmp_path / "runs"), *TINY_OVERRIDES, "--launcher", "sbatch"])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(message, err, re.S), err
    assert not (tmp_path / "runs").exists()


def test_slurm_launcher_without_slurm_fails_before_writing(tmp_path, capsys, monkeypatch):
    """The spec is checked first (a bad grid names its own fix), then the missing Slurm tools."""
    monkeypatch.setattr("mora.launch.slurm_available", lambda: False)
    spec = _spec(tmp_path)
    rc = main([str(spec), "--section", "mini", "--runs-dir", str(tmp_path / "runs"), *TINY_OVERRIDES, "--launcher", "sbatch"])
    assert rc == 2
    assert "sbatch/squeue are not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_section_and_launcher(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main([str(spec), "--section", "paper", "--runs-dir", str(tmp_path)]) == 2
    assert "no section 'paper'; it has ['mini']" in capsys.readouterr().err
    assert main([str(spec), "--section", "mini", "--launcher", "pbs", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown launcher 'pbs'" in capsys.readouterr().err


def test_local_launch_runs_the_grid_then_relaunch_runs_nothing(tmp_path):
    """The local launcher: a Hydra multirun over the manifest (hydra/sweeper=manifest), in one process."""
    spec = _spec(tmp_path, SPEC.replace("lr_grid: [1e-2, 3e-2]", "lr_grid: [1e-2]"))
    store = tmp_path / "runs"
    cmd = [sys.executable, "-m", "mora.launch", str(spec), "--section", "mini", "--runs-dir", str(store), *TINY_OVERRIDES]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "launched 2 runs" in done.stdout and "2 finished, 0 not" in done.stdout
    assert re.search(r"\[done 1/2\] (LoRA|MoRA) r=4 \| lr=0.01: char_acc \d", done.stdout), done.stdout  # the queue's lines
    assert "grid: 2/2 done, 0 running, 0 failed, 0 left" in done.stdout
    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert [c.status for c in cells] == ["completed", "completed"]
    # launched by the artifact: its wandb group (a run started by hand has artifact null: its experiment's group)
    assert {json.loads((Path(c.path) / "config.json").read_text())["artifact"] for c in cells} == {"tinygrid"}
    (launch_dir,) = (store / ".launch").iterdir()
    assert len((launch_dir / "manifest.txt").read_text().splitlines()) == 2
    assert [c["run_id"] for c in json.loads((launch_dir / "cells.json").read_text())["cells"]] == [c.run_id for c in cells]

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to launch: submitted 0 jobs" in again.stdout, again.stdout
    assert len(list((store / ".launch").iterdir())) == 1

    from mora.report import render

    result = render(spec, store, tmp_path / "reports", ["mini"], TINY_RUN[1:], wandb_log=False)
    assert not result["tables"][0].notes
    assert "| LoRA r=4 |" in result["markdown"] and "| MoRA r=4 |" in result["markdown"]


def test_manifest_sweeper_rejects_what_it_cannot_run(tmp_path):
    from hydra_plugins.mora_manifest_sweeper import read_manifest

    (tmp_path / "m.txt").write_text("a=1 'b=x y'\n\nc=3\n")
    with pytest.raises(ValueError, match="blank line inside the manifest"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text("a=1 'b=x y'\nc=3\n\n")
    assert read_manifest(tmp_path / "m.txt") == [["a=1", "b=x y"], ["c=3"]]
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.txt")


# --- the grid as Hydra multiruns (mora.launch --sweep; README's `python -m mora.train -m` examples) ----


def test_sweep_lines_are_hydra_multiruns_of_exactly_the_grid(tmp_path, capsys):
    """Each printed line, expanded by Hydra's own basic sweeper, names the runs of its row x group: all
    the lines together are the section's grid, run id for run id (Table 1 at paper scale)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mora.artifacts import Composer

    spec = ROOT / "experiments" / "table1.yaml"
    assert main([str(spec), "--section", "paper", "--sweep"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python -m mora.train -m ")]
    assert len(lines) == 13 * 4  # rows x column groups
    assert "method=loraplus" in lines[8] and "method.lr_ratio=2,4" in lines[8] and "train.lr=0.0001,0.0002" in lines[8]
    swept = set()
    with Composer() as composer:
        for line in lines:
            overrides = OverridesParser.create().parse_overrides(line.split()[4:])
            (batch,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
            swept |= {composer.compose(list(job), line).run_id for job in batch}
    assert swept == {c.run_id for c in expand(spec, ["paper"], tmp_path)}


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose(config_name="config", overrides=["+launcher=slurm"], return_hydra_config=True)
        cpu = compose(config_name="config", overrides=["+launcher=slurm_cpu"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["+launcher=local"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.additional_parameters.requeue is True
    assert slurm.hydra.launcher.max_num_timeout > 0 and slurm.hydra.launcher.gpus_per_node == 1
    assert cpu.hydra.launcher.gpus_per_node is None and cpu.hydra.launcher.cpus_per_task == 1
    assert local.hydra.launcher._target_.endswith("BasicLauncher")
    assert "launcher" not in slurm  # launcher choice is not part of the run (nor of its id)


def test_mini_targets_write_the_fixtures_before_launching():
    """The *_mini experiments read fixture files a clean clone does not have: `make reproduce-X-mini`
    must write them first (dry run of make; the fixtures stamp is made to look stale)."""
    out = subprocess.run(["make", "-n", "-W", "mora/data/fixtures.py", "reproduce-table1-mini"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    writes = [i for i, line in enumerate(out) if "-m mora.data.fixtures" in line]
    launches = [i for i, line in enumerate(out) if "-m mora.launch experiments/table1.yaml --section mini" in line]
    assert writes and launches and writes[0] < launches[0], out
