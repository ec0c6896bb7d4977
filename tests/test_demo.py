"""`make demo`'s grid: each mini row of table2 at its own learning rate, composed into real runs that
the report's table reads (the full demo itself is timed by hand: see the README)."""

from mora import demo
from mora.artifacts import load_spec
from mora.launch import grid_cells


def test_the_demo_trains_each_mini_row_at_its_lr_on_one_seed(tmp_path):
    spec = load_spec(demo.SPEC)
    mini, paper = spec.sections["mini"], spec.sections["paper"]
    assert len(mini.rows) == len(paper.rows) and len(mini.columns) == len(paper.columns)
    section = demo.demo_section(mini, seed=1)
    cells = grid_cells(spec, [section], tmp_path)
    assert [c.extra["row"] for c in cells] == [r.label for r in mini.rows]  # one run per row
    for cell, row in zip(cells, mini.rows):
        config = cell.run.composed.config
        assert config["seed"] == 1 and config["train"]["lr"] == float(row.lr) and cell.status == "missing"
        assert float(row.lr) in [float(x) for x in row.lr_grid]
        assert {c.step for c in mini.columns} <= set(config["eval"]["steps"]) | {config["train"]["max_steps"]}
    # the same runs as the full mini grid's (seed 1, the row's lr): the demo fills the report's table
    full = {c.run_id for c in grid_cells(spec, [mini], tmp_path)}
    assert {c.run_id for c in cells} <= full

