"""The `gpu` sections and their recorded results (docs/results.md): every cell composes into a run, each
row's learning rate is the pick of its recorded sweep, the sweep is what the recorded store says, and
the tables in docs/results.md are what `mora.report` renders from `results/gpu/` today."""

import re
import statistics
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
GPU_SPECS = ["table2", "fig3", "table4"]


def _raw(name):
    return yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", GPU_SPECS)
def test_every_gpu_cell_composes_into_a_run_the_store_holds_or_names(name, tmp_path):
    spec = load_spec(ROOT / "experiments" / f"{name}.yaml")
    cells = grid_cells(spec, [spec.section("gpu")], STORE)
    assert cells and all(c.run.composed.config["experiment_name"] == "uuid_gpu" for c in cells)
    assert {c.run.composed.config["seed"] for c in cells} == {0, 1, 2}
    finished = [c for c in cells if c.status == "completed"]
    # table2's and fig3's grids were run whole; table4's r = 32 column is the next sitting's
    assert len(finished) == (len(cells) if name != "table4" else len(cells) - 9), [c.status for c in cells]


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
