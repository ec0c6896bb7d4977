"""`mora.launch --dry-run`: the plan's summary first (runs, resources per run, expected time and
GPU-hours from bench/cost.yaml), then one command per line, and nothing written; the sbatch
line asks for the resources of conf/launcher/slurm.yaml, the same place submitit reads them from."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from mora.launch import main
from mora.launching.slurm import launcher_settings, sbatch_options
from runner import ROOT

TABLE2 = ROOT / "experiments" / "table2.yaml"


def test_the_dry_run_prints_the_summary_the_sbatch_line_and_the_commands_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "runs"
    assert main([str(TABLE2), "--section", "paper", "--runs-dir", str(store), "--launcher", "sbatch", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "grid: 13 runs; 0 finished, 0 queued on Slurm, 0 stale: skipped 0; launching 13"
    assert lines[1] == "  each run: 1 GPU, 8 CPUs, 64 GB, time limit 24:00:00 (conf/launcher/slurm.yaml)"
    # every run of Table 2 has a measured step time: hours = seconds per step x 1000 steps, 1 GPU each
    cost = yaml.safe_load((ROOT / "bench" / "cost.yaml").read_text())["step_seconds"]["uuid_memorization"]
    per_row = [cost["fft"]] + [cost["lora"]] * 3 + [cost["mora"]] * 3 + [cost["lora@256"]] * 3 + [cost["mora@256"]] * 3
    hours = sum(per_row) * 1000 / 3600
    assert lines[2] == (f"  expected: {hours:.1f} h of run time for 13 of 13 runs (from bench/cost.yaml, "
                        f"NVIDIA H200) = {hours:.1f} GPU-hours")
    (sbatch,) = [line for line in lines if line.startswith("sbatch line: ")]
    for option in ("--array=0-12%64", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64G", "--time=24:00:00",
                   "--signal=B:USR1@300", "--requeue", f"--output={store}/.launch/table2-paper-"):
        assert option in sbatch, option
    assert sbatch.endswith("/manifest.txt") and str(ROOT / "slurm" / "array.sbatch") in sbatch
    commands = lines[lines.index("commands (13; dry run: nothing written, nothing launched):") + 1:]
    assert len(commands) == 13 and all(c.startswith("python -m mora.train experiment=uuid_memorization ") for c in commands)
    assert commands[1] == ("python -m mora.train experiment=uuid_memorization method=lora method.r=8 method.alpha=16 "
                           f"train.lr=0.0001 seed=0 paths.runs_dir={store} artifact=table2")  # unquoted
    assert not store.exists() and not (tmp_path / "wandb").exists()


def test_sbatch_asks_for_what_the_launcher_config_says():
    """One place for the resources: conf/launcher/<name>.yaml, with --hydra overrides, for both routes."""
    assert sbatch_options(launcher_settings("slurm_cpu", [])) == [
        "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=01:00:00", "--signal=B:USR1@30", "--requeue",
        "--open-mode=append"]
    gpu = sbatch_options(launcher_settings("slurm", ["hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=2880"]))
    assert "--partition=gpu" in gpu and "--time=48:00:00" in gpu and "--gpus-per-node=1" in gpu
    # the template itself asks for no resources: they would be a second place
    template = (ROOT / "slurm" / "array.sbatch").read_text()
    assert not any(f"#SBATCH --{r}" in template for r in ("cpus-per-task", "gpus", "mem", "time", "partition"))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("args,report", [("", True), ("--dry-run", False), ("--sweep", False),
                                         ("--launcher sbatch --dry-run", False)])
def test_make_reproduce_renders_the_report_only_when_it_launched(args, report):
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "reproduce-table1", f"LAUNCH_ARGS={args}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "-m mora.launch experiments/table1.yaml --section paper" in out
    assert ("-m mora.report" in out) == report
