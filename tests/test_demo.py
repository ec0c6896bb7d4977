"""`make demo`'s pieces: its spec composes into real runs, and its table and plot render what the
results say (the full demo itself is timed by hand: see the README)."""

import yaml

from mora import demo
from runner import compose


def _spec():
    return yaml.safe_load(demo.SPEC.read_text())


def test_every_mini_row_composes_and_pairs_with_a_paper_row():
    spec = _spec()
    mini, paper = spec["mini"], spec["paper"]
    assert len(mini["rows"]) == len(paper["rows"]) and len(mini["columns"]) == len(paper["columns"])
    for row in mini["rows"]:
        cfg = compose(demo.cell_overrides(mini, row, seed=0, extra=[]))
        assert cfg.experiment_name == mini["experiment"]
        assert cfg.train.lr == float(row["lr"]) and float(row["lr"]) in [float(x) for x in row["lr_grid"]]
        assert set(mini["columns"]) <= set(cfg.eval.steps) | {cfg.train.max_steps}


def test_table_shows_ours_beside_the_paper_and_marks_missing_cells(tmp_path):
    spec = _spec()
    mini, paper = spec["mini"], spec["paper"]
    first, second = mini["rows"][0]["label"], mini["rows"][1]["label"]
    results = {
        first: {
            "evals": [{"step": s, "char_acc": 10.0 * i} for i, s in enumerate(mini["columns"], 1)],
            "budget": {"adapter_total": 0, "trainable_total": 1234},
            "train_loss": [[1, 3.0], [2, 2.5]],
        },
        second: {"evals": [{"step": mini["columns"][0], "char_acc": 55.5}], "budget": {"adapter_total": 777}},
    }
    table = demo.render_table(mini, paper, results).splitlines()
    row1 = next(line for line in table if line.startswith(first))
    assert "1,234" in row1 and " 40.0" in row1 and " 42.5" in row1  # ours (step 4) and the paper's FFT
    row2 = next(line for line in table if line.startswith(second))
    assert " 55.5" in row2 and row2.count("    -") == len(mini["columns"]) - 1 and "777" in row2
    png = demo.plot_losses(mini, results, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_mini_lr_is_the_best_of_its_recorded_sweep():
    for row in _spec()["mini"]["rows"]:
        sweep = {float(lr): accs for lr, accs in row["sweep"].items()}
        assert sorted(sweep) == sorted(float(x) for x in row["lr_grid"]), row["label"]
        assert all(len(accs) == len(_spec()["mini"]["columns"]) for accs in sweep.values()), row["label"]
        best = max(sweep, key=lambda lr: (sweep[lr][-1], sum(sweep[lr]) / len(sweep[lr])))
        assert float(row["lr"]) == best, row["label"]
