"""`python -m mora.report`: a synthetic results store rendered as Markdown / CSV exactly, the LR-grid
selection, empty cells traceable to the run ids that would fill them, the wandb table, the figures,
and bad specs that fail saying what to fix."""

import json
import textwrap
from types import SimpleNamespace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mora import report
from mora.artifacts import load_spec
from mora.render.figures import mean_curve
from mora.render.text import CSV_FIELDS, table_records
from mora.runs import run_id
from runner import ROOT, compose, current_record

SPEC = """
artifact: synthetic
kind: {kind}
title: Synthetic table
metric: char_acc
selection: best final char_acc
select: {{metric: char_acc, mode: max}}
paper:
  experiment: uuid_mini
  seeds: [0, 1]
  columns: [100, 200]
  rows:
    - {{label: LoRA, rank: 4, overrides: [method=lora, method.r=4], lr_grid: [1e-3, 3e-3], paper: [9.9, 54.2]}}
    - {{label: MoRA, rank: 4, overrides: [method=mora, method.r=4], lr_grid: [3e-3], paper: [10.1, 100]}}
"""

# (method overrides, lr, seed) -> char_acc at steps 100 and 200, or a status without results
RUNS = {
    (("method=lora", "method.r=4"), "1e-3", 0): (10.0, 30.0),
    (("method=lora", "method.r=4"), "1e-3", 1): (20.0, 40.0),
    (("method=lora", "method.r=4"), "3e-3", 0): (50.0, 70.0),
    (("method=lora", "method.r=4"), "3e-3", 1): (60.0, 90.0),
    (("method=mora", "method.r=4"), "3e-3", 0): "failed",
}


def _overrides(overrides, lr, seed) -> list[str]:
    return ["experiment=uuid_mini", *overrides, f"train.lr={lr}", f"seed={seed}"]


def _rid(overrides, lr, seed) -> str:
    return run_id(OmegaConf.to_container(compose(_overrides(overrides, lr, seed)), resolve=True))


@pytest.fixture(scope="module")
def ids():
    return {key: _rid(*key) for key in [*RUNS, (("method=mora", "method.r=4"), "3e-3", 1)]}


def _store(root: Path, ids: dict, spectrum: bool = False) -> Path:
    for key, result in RUNS.items():
        run = root / "uuid_mini" / ids[key]
        run.mkdir(parents=True)
        if result == "failed":
            metrics = {"status": "failed", "evals": []}
        else:
            a, b = result
            metrics = {"status": "completed", "evals": [{"step": 100, "char_acc": a}, {"step": 200, "char_acc": b}],
                       "final": {"step": 200, "char_acc": b}, "train_loss": [[10, 3.0], [20, 2.0 - b / 100]]}
            if spectrum:
                metrics["spectrum"] = {"threshold": 0.1, "by_type": {"q": a / 10, "k": b / 10}}
        (run / "metrics.json").write_text(json.dumps({**metrics, **current_record(_overrides(*key))}))
    return root


def _spec(tmp_path: Path, kind: str = "table", text: str = SPEC) -> Path:
    path = tmp_path / "synthetic.yaml"
    path.write_text(text.format(kind=kind))
    return path


def test_markdown_and_csv_from_a_synthetic_store(tmp_path, ids):
    store = _store(tmp_path / "runs", ids)
    result = report.render(_spec(tmp_path), store, tmp_path / "out", wandb_log=False)
    lora = [ids[(("method=lora", "method.r=4"), lr, s)] for lr in ("1e-3", "3e-3") for s in (0, 1)]
    mora = [ids[(("method=mora", "method.r=4"), "3e-3", s)] for s in (0, 1)]
    expected_md = textwrap.dedent(f"""\
        **Synthetic table** (paper; cells: ours / paper; ours = mean ± std over seeds)

        | method | r | 100 | 200 |
        |---|---|---|---|
        | LoRA | 4 | 55.0 ± 7.1 / 9.9 | 80.0 ± 14.1 / 54.2 |
        | MoRA | 4 | – [1] / 10.1 | – [1] / 100.0 |

        Selection: best final char_acc.
        Chosen: LoRA r=4 (lr=0.003).

        `– [n]`: no finished run yet; it would come from:

        ```
        [1] MoRA r=4 × main (uuid_mini): no finished run with the metric; the grid's runs:
            {store}/uuid_mini/{mora[0]}  [failed]  lr=0.003, seed 0
            {store}/uuid_mini/{mora[1]}  [not started]  lr=0.003, seed 1
            e.g. python -m mora.train experiment=uuid_mini method=mora method.r=4 train.lr=0.003 seed=0
        ```
        """)
    assert result["markdown"] == expected_md
    assert (tmp_path / "out" / "synthetic_paper.md").read_text() == expected_md
    grid = " ".join(lora)
    expected_csv = textwrap.dedent(f"""\
        artifact,section,row,rank,column,group,experiment,metric,step,ours_mean,ours_std,n_seeds,paper,status,chosen,run_ids,grid_run_ids,scoring
        synthetic,paper,LoRA,4,100,main,uuid_mini,char_acc,100,55.0,7.071068,2,9.9,ok,lr=0.003,{lora[2]} {lora[3]},{grid},
        synthetic,paper,LoRA,4,200,main,uuid_mini,char_acc,200,80.0,14.142136,2,54.2,ok,lr=0.003,{lora[2]} {lora[3]},{grid},
        synthetic,paper,MoRA,4,100,main,uuid_mini,char_acc,100,,,0,10.1,missing,,,{mora[0]} {mora[1]},
        synthetic,paper,MoRA,4,200,main,uuid_mini,char_acc,200,,,0,100.0,missing,,,{mora[0]} {mora[1]},
        """)
    assert (tmp_path / "out" / "synthetic_paper.csv").read_text() == expected_csv
    tex = (tmp_path / "out" / "synthetic_paper.tex").read_text()
    assert "LoRA & 4 & 55.0$\\pm$7.1 / 9.9 & 80.0$\\pm$14.1 / 54.2 \\\\" in tex and "-- / 10.1" in tex


def test_a_sections_caption_is_said_under_the_title(tmp_path, ids):
    """A miniature that carries no signal says so (experiments/table4.yaml's `caption`: pipeline check only)."""
    store = _store(tmp_path / "runs", ids)
    text = SPEC.replace("paper:\n  experiment", "paper:\n  caption: \"pipeline check only: a tiny model\"\n  experiment")
    md = report.render(_spec(tmp_path, text=text), store, tmp_path / "out", wandb_log=False)["markdown"].splitlines()
    assert md[:3] == ["**Synthetic table** (paper; cells: ours / paper; ours = mean ± std over seeds)",
                      "_pipeline check only: a tiny model_", ""]
    for artifact in ("table1", "table4"):  # the miniatures measured to score 0.0 on the math fixtures say so
        assert load_spec(ROOT / "experiments" / f"{artifact}.yaml").sections["mini"].caption.startswith("pipeline check only")


def test_a_partial_grid_still_fills_the_cell_and_says_so(tmp_path, ids):
    store = _store(tmp_path / "runs", ids)
    for seed in (0, 1):  # drop the better learning rate: the other point of the grid is chosen
        (store / "uuid_mini" / ids[(("method=lora", "method.r=4"), "3e-3", seed)] / "metrics.json").unlink()
    md = report.render(_spec(tmp_path), store, tmp_path / "out", wandb_log=False)["markdown"]
    assert "| LoRA | 4 | 15.0 ± 7.1* / 9.9 | 35.0 ± 7.1* / 54.2 |" in md
    assert "Chosen: LoRA r=4 (lr=0.001)." in md and "incomplete grid" in md


def test_the_wandb_offline_run_holds_the_table(tmp_path, ids, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    store = _store(tmp_path / "runs", ids)
    result = report.render(_spec(tmp_path), store, tmp_path / "out", wandb_log=True)
    run_dir = result["wandb_dir"]
    assert run_dir.name.startswith("offline-run-") and run_dir.parent.parent == tmp_path / "out"
    (table,) = run_dir.glob("files/media/table/synthetic/paper_cells_*.table.json")  # the long form
    logged = json.loads(table.read_text())
    assert logged["columns"] == CSV_FIELDS
    assert [r[2] for r in logged["data"]] == ["LoRA", "LoRA", "MoRA", "MoRA"]
    assert logged["data"][0][9] == 55.0 and logged["data"][2][13] == "missing"
    # and the table as the paper lays it out: method x column, ours beside the paper's number
    (table,) = [p for p in run_dir.glob("files/media/table/synthetic/paper_*.table.json") if "_cells_" not in p.name]
    paper = json.loads(table.read_text())
    assert paper["columns"] == ["method", "r", "100 (ours)", "100 (paper)", "200 (ours)", "200 (paper)"]
    assert paper["data"] == [["LoRA", "4", 55.0, 9.9, 80.0, 54.2], ["MoRA", "4", None, 10.1, None, 100.0]]


@pytest.mark.parametrize("kind", ["curves", "spectrum"])
def test_figures_are_drawn(tmp_path, ids, kind):
    store = _store(tmp_path / "runs", ids, spectrum=True)
    text = SPEC if kind == "curves" else SPEC.replace("columns: [100, 200]", "columns: [{{key: q, metric: spectrum/q}}, {{key: k, metric: spectrum/k}}]")
    result = report.render(_spec(tmp_path, kind, text), store, tmp_path / "out", wandb_log=False)
    png = tmp_path / "out" / "synthetic_paper.png"
    assert png in result["files"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if kind == "spectrum":
        assert "| LoRA | 4 | 5.5 ± 0.7 / 9.9 | 8.0 ± 1.4 / 54.2 |" in result["markdown"]


@pytest.mark.parametrize("width", [6.5, 8.0])
def test_a_long_title_stays_inside_the_figure(width):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mora.render.figures import wrapped

    title = ("Figure 4: pretraining loss, LoRA / MoRA / ReLoRA / ReMoRA at equal budget (r 128; miniature r 8), "
             "the 250M shape from scratch on local text (gpu)")
    fig = plt.figure(figsize=(width, 4.5))
    edges = []
    for text in (title, wrapped(title, fig)):
        shown = fig.suptitle(text, fontsize=10)
        fig.canvas.draw()
        box = shown.get_window_extent()
        edges.append(box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1)
    plt.close(fig)
    assert edges == [False, True]  # as one line it is cut off; wrapped it fits


def test_curves_average_the_seeds():
    runs = [SimpleNamespace(completed=True, metrics={"train_loss": [[1, 4.0], [2, 3.0], [3, 2.0]]}),
            SimpleNamespace(completed=True, metrics={"train_loss": [[1, 2.0], [2, 1.0]]}),
            SimpleNamespace(completed=False, metrics={"train_loss": [[1, 9.0]]})]
    assert mean_curve(runs) == ([1, 2], [3.0, 2.0])


@pytest.mark.parametrize(
    "change,message",
    [
        (("experiment: uuid_mini", "experiment: nope_mini"), "unknown experiment 'nope_mini'; conf/experiment/ has"),
        (("method.r=4], lr_grid: [3e-3]", "method.nope=4], lr_grid: [3e-3]"), "not a valid run: ValueError: .*nope"),
        (("lr_grid: [3e-3]", "lr_grid: no_such_grid"), "lr_grid 'no_such_grid' is not in `grids:`"),
        (("paper: [10.1, 100]", "paper: [10.1]"), "1 paper numbers for 2 columns"),
        (("kind: {kind}", "kind: pie"), "kind 'pie' is not one of"),
    ],
)
def test_bad_specs_fail_saying_what_to_fix(tmp_path, ids, change, message):
    store = _store(tmp_path / "runs", ids)
    text = SPEC.replace(*change)
    path = tmp_path / "bad.yaml"
    path.write_text(text.format(kind="table"))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        report.render(path, store, tmp_path / "out", wandb_log=False)


def test_missing_store_or_spec_fails_saying_what_to_fix(tmp_path, capsys):
    with pytest.raises(ValueError, match="results store .* does not exist: train the artifact's runs first"):
        report.render(_spec(tmp_path), tmp_path / "no_store", tmp_path / "out", wandb_log=False)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nope.yaml"), "--no-wandb"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_every_artifact_spec_loads():
    specs = sorted((ROOT / "experiments").glob("*.yaml"))
    names = {p.stem for p in specs}
    assert {"table1", "table2", "table3", "table4", "fig2", "fig3", "fig4", "fig5"} <= names
    for path in specs:
        spec = load_spec(path)
        assert spec.artifact == path.stem and "paper" in spec.sections, path
        for section in spec.sections.values():
            assert section.rows and section.columns


def test_pending_commands_name_the_runs_to_launch(tmp_path, ids):
    store = _store(tmp_path / "runs", ids)
    commands = report.pending_commands(_spec(tmp_path), store)
    assert commands == [f"python -m mora.train experiment=uuid_mini method=mora method.r=4 train.lr=0.003 seed={s}" for s in (0, 1)]


SCORED_SPEC = """
artifact: scored
kind: table
title: Scored table
select: {metric: gsm8k, mode: max}
paper:
  experiment: uuid_mini
  seeds: [0, 1]
  columns:
    - {key: gsm8k, label: GSM8K, metric: gsm8k}
  rows:
    - {label: LoRA, rank: 4, overrides: [method=lora, method.r=4], lr_grid: [1e-3, 3e-3]}
    - {label: MoRA, rank: 4, overrides: [method=mora, method.r=4], lr_grid: [3e-3]}
"""


def test_the_scoring_mode_of_benchmark_scores_is_in_the_table(tmp_path, ids):
    """A benchmark score carries the mode it was scored in (metrics.json benchmarks.<suite>.scoring):
    the Markdown says it under the table, the CSV and the wandb table in a column."""
    store = tmp_path / "runs"
    for key, result in RUNS.items():
        run = store / "uuid_mini" / ids[key]
        run.mkdir(parents=True)
        metrics = {"status": "failed"} if result == "failed" else {
            "status": "completed", "scores": {"gsm8k": result[1]},
            "benchmarks": {"math": {"scores": {"gsm8k": result[1]}, "scoring": "paper"}}}
        (run / "metrics.json").write_text(json.dumps({**metrics, **current_record(_overrides(*key))}))
    spec = tmp_path / "scored.yaml"
    spec.write_text(SCORED_SPEC)
    result = report.render(spec, store, tmp_path / "out", wandb_log=False)
    assert "| LoRA | 4 | 80.0 ± 14.1 |" in result["markdown"]
    assert "Scoring (benchmark.scoring): paper; paper = the paper's answer checks" in result["markdown"]
    records = table_records(result["tables"][0])
    assert [r["scoring"] for r in records] == ["paper", ""]  # MoRA has no finished run
    assert (tmp_path / "out" / "scored_paper.csv").read_text().splitlines()[1].endswith(",paper")


def test_a_table_of_recorded_runs_without_a_spec(tmp_path, ids, capsys):
    """`mora.report --runs DIR --rows KEYS --metric M`: rows from the runs' own keys, the seeds of one
    config averaged, the best config of a row chosen by the spec's rule; nothing composed."""
    from mora.identity import run_identity

    store = _store(tmp_path / "runs", ids)
    for key in RUNS:
        run = store / "uuid_mini" / ids[key]
        config = OmegaConf.to_container(compose(_overrides(*key)), resolve=True)
        (run / "config.json").write_text(json.dumps(config))
        (run / "identity.json").write_text(json.dumps(run_identity(config)))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["summary"] = {"method": config["method"]["method"], "rank": config["method"]["r"]}
        (run / "metrics.json").write_text(json.dumps(metrics))
    report.main(["--runs", str(store / "uuid_mini"), "--rows", "method,rank", "--metric", "char_acc",
                 "--out", str(tmp_path / "out")])
    md = capsys.readouterr().out.splitlines()
    assert md[0] == f"**{store / 'uuid_mini'}: char_acc by method, rank** (runs; cells: mean ± std over seeds)"
    assert md[2:6] == ["| method | char_acc |", "|---|---|", "| method=lora, rank=4 | 80.0 ± 14.1 |",
                       "| method=mora, rank=4 | – [1] |"]
    assert "Chosen: method=lora, rank=4 (lr=0.003)." in md
    assert f"{store}/uuid_mini/{ids[(('method=mora', 'method.r=4'), '3e-3', 0)]}  [failed]  lr=0.003, seed 0" in "\n".join(md)
    assert (tmp_path / "out" / "uuid_mini_runs.csv").is_file()
    with pytest.raises(SystemExit):
        report.main(["--runs", str(store / "uuid_mini"), "--rows", "method.nope"])
    assert "no key 'method.nope'" in capsys.readouterr().err
