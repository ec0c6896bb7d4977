"""The `gpu` sections and their recorded results (docs/results.md): every cell of every `gpu` section
composes into a run that `make reproduce-<artifact>-gpu` launches, each row's learning rate is the pick of
its recorded sweep, the sweep is what the recorded store says, and the tables in docs/results.md are what
`mora.report` renders from `results/gpu/` today."""

import re
import shutil
import statistics
import subprocess
from collections import defaultdict

import pytest
import yaml

from mora import report
from mora.artifacts import load_spec
from mora.launch import grid_cells
from mora.runs import read_json
from runner import ROOT

STORE = ROOT / "results" / "gpu"
DOC = ROOT / "docs" / "results.md"
GPU_SPECS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if "gpu" in yaml.safe_load(p.read_text()))


def _raw(name):
    return yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())


def test_the_gpu_specs_are_found():
    assert {"table2", "fig3", "table4", "table3", "fig4", "fig5"} <= set(GPU_SPECS)


@pytest.mark.parametrize("name", GPU_SPECS)
def test_every_gpu_cell_composes_into_a_run_the_store_holds(name, tmp_path):
    spec = load_spec(ROOT / "experiments" / f"{name}.yaml")
    section = spec.section("gpu")
    cells = grid_cells(spec, [section], STORE)
    experiments = {group.experiment for group in section.groups.values()}
    assert cells and experiments <= {"uuid_gpu", "c4_gpu"}
    assert {c.run.composed.config["experiment_name"] for c in cells} == experiments
    assert {c.run.composed.config["seed"] for c in cells} == set(section.seeds) and len(section.seeds) >= 2
    assert [c.status for c in cells] == ["completed"] * len(cells)


def test_the_pretraining_sections_name_the_same_runs():
    """Table 3, Figure 4 and Figure 5 (gpu) are one grid: a launch of any of them trains the others' runs."""
    runs = {}
    for name in ("table3", "fig4", "fig5"):
        spec = load_spec(ROOT / "experiments" / f"{name}.yaml")
        runs[name] = {c.run.path.name for c in grid_cells(spec, [spec.section("gpu")], STORE)}
    assert len(runs["table3"]) == 8 and runs["table3"] == runs["fig4"] == runs["fig5"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("name", GPU_SPECS)
def test_make_reproduce_gpu_launches_the_section_and_has_a_help_line(name):
    made = subprocess.run(["make", "-n", f"reproduce-{name}-gpu", "JOBS=8"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    assert f"-m mora.launch experiments/{name}.yaml --section gpu --launcher local --jobs 8" in made.stdout
    assert f"-m mora.report experiments/{name}.yaml --section gpu" in made.stdout
    helped = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert re.search(rf"^  reproduce-{name}-gpu +\S", helped.stdout, re.M), helped.stdout


@pytest.mark.parametrize("section", ["mini", "gpu"])
def test_each_lr_is_the_best_of_its_recorded_sweep(section):
    body = _raw("table2")[section]
    for row in body["rows"]:
        sweep = {float(lr): accs for lr, accs in row["sweep"].items()}
        assert sorted(sweep) == sorted(float(x) for x in row["lr_grid"]), row["label"]
        assert all(len(accs) == len(body["columns"]) for accs in sweep.values()), row["label"]
        best = max(sweep, key=lambda lr: (sweep[lr][-1], sum(sweep[lr]) / len(sweep[lr])))
        assert float(row["lr"]) == best, row["label"]


def test_the_gpu_sweep_is_the_recorded_store_averaged_over_seeds():
    body = _raw("table2")["gpu"]
    evals = defaultdict(list)
    for run in (STORE / "uuid_gpu").iterdir():
        config, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
        method = config["method"]
        at = {e["step"]: e["char_acc"] for e in metrics["evals"]}
        key = (method["method"], method.get("r") if method["method"] != "fft" else None, method.get("kind"),
               config["train"]["lr"])
        evals[key].append([at[step] for step in body["columns"]])
    for row in body["rows"]:
        opts = dict(o.split("=", 1) for o in row["overrides"])
        for lr, recorded in row["sweep"].items():
            key = (opts["method"], int(opts["method.r"]) if "method.r" in opts else None, opts.get("method.kind"),
                   float(lr))
            seeds = evals[key]
            assert len(seeds) == 3, (row["label"], lr)
            means = [round(statistics.mean(s[i] for s in seeds), 1) for i in range(len(body["columns"]))]
            assert means == recorded, (row["label"], lr)


def _table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("name", GPU_SPECS)
def test_the_tables_in_docs_results_are_what_the_report_renders_now(name, tmp_path):
    out = report.render(ROOT / "experiments" / f"{name}.yaml", STORE, tmp_path, sections=["gpu"], wandb_log=False)
    rendered = _table_lines(out["markdown"])
    assert rendered and "†" not in out["markdown"], "a stale run: retrain it or say so in docs/results.md"
    committed = (STORE / "reports" / f"{name}_gpu.md").read_text()  # rendered with --runs-dir results/gpu
    assert (tmp_path / f"{name}_gpu.md").read_text().replace(str(STORE), "results/gpu") == committed
    doc = DOC.read_text()
    marker = re.search(rf"<!-- {name}_gpu: .*? -->\n((?:\|.*\n)+)", doc)
    assert marker, f"docs/results.md has no table marked {name}_gpu"
    assert _table_lines(marker.group(1)) == rendered
