"""docs/architecture.md's recipes, followed: a method written here (a scaled LoRA: its .py is this file,
its YAML goes into a config directory of its own) is found, trained on the tiny model through
mora.train, merged and reported, with no other file of the project changed; and a data task written
here is found and trained on the same way."""

import json
import shutil
from dataclasses import dataclass

import pytest
import torch

from runner import ROOT, TINY_RUN, compose, metrics_files

SCALED_LORA_YAML = """\
# Scaled LoRA: LoRA's update times `scale` (a method written by tests/test_recipes.py).
defaults:
  - lora
  - _self_
method: scaled_lora
scale: 2.0
"""

SPEC = """\
artifact: recipe_check
kind: table
title: A method added by the recipe
metric: char_acc
mini:
  experiment: uuid_mini
  seeds: [0]
  overrides: {overrides}
  columns: [3, 6]
  rows:
    - {{label: Scaled LoRA, overrides: [method=scaled_lora], lr: 3e-3}}
"""


@pytest.fixture
def scaled_lora(monkeypatch):
    """Step 1 of "add a method": the options dataclass, registered by name; the layer is LoRA's, which
    reads the scaling from the config. The registry is restored after the test."""
    from mora.adapters.config import METHODS, register
    from mora.adapters.lora import LoRAConfig

    monkeypatch.setattr(METHODS, "_classes", dict(METHODS._classes))

    @register("scaled_lora")
    @dataclass
    class ScaledLoRAConfig(LoRAConfig):
        scale: float

        @property
        def scaling(self) -> float:
            return self.scale * super().scaling

    return ScaledLoRAConfig


def test_a_method_added_by_the_recipe_is_found_trained_merged_and_reported(tmp_path, scaled_lora):
    from transformers import AutoModelForCausalLM

    from mora.adapters import available_methods
    from mora.artifacts import load_spec, section_table
    from mora.evaluate import load_model
    from mora.render.text import render_markdown
    from mora.train import train

    conf = tmp_path / "conf"  # the project's conf/ plus step 2: the method's YAML
    shutil.copytree(ROOT / "conf", conf)
    (conf / "method" / "scaled_lora.yaml").write_text(SCALED_LORA_YAML)
    assert "scaled_lora" in available_methods() and not (ROOT / "conf" / "method" / "scaled_lora.yaml").exists()

    runs = tmp_path / "runs"
    metrics = train(compose([*TINY_RUN, f"paths.runs_dir={runs}", "method=scaled_lora", "train.lr=3e-3", "seed=0"], conf))
    assert metrics["status"] == "completed" and metrics["summary"]["method"] == "scaled_lora"
    assert [e["step"] for e in metrics["evals"]] == [3, 6]
    (path,) = metrics_files(runs)
    run_dir = path.parent

    # merged: the saved model computes what the base plus the saved adapter computes, at scale 2
    config = json.loads((run_dir / "config.json").read_text())
    adapted, tokenizer = load_model(run_dir, config, "adapter")
    layer = adapted.model.layers[0].self_attn.q_proj
    assert type(layer.config) is scaled_lora and layer.scaling == 2.0 * 16 / 8
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    ids = tokenizer("0f6a1c2e-3b4d:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-4)

    # reported: a spec naming the method finds the run and shows its numbers
    spec = tmp_path / "recipe_check.yaml"
    spec.write_text(SPEC.format(overrides=[o for o in TINY_RUN if not o.startswith("experiment=")]))
    loaded = load_spec(spec, conf)
    markdown = render_markdown(section_table(loaded, loaded.section("mini"), runs, conf_dir=conf))
    (row,) = [line for line in markdown.splitlines() if line.startswith("| Scaled LoRA |")]
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert cells == [f"{e['char_acc']:.1f}" for e in metrics["evals"]], markdown


UPPER_UUID_YAML = """\
# UUID pairs with upper-case values (a task written by tests/test_recipes.py).
name: uuid_upper
builder:
  _target_: mora.data.build_task
  task: uuid_upper
  n_pairs: 64
  seed: ${seed}
  mask_key: false
"""


def test_a_task_added_by_the_recipe_is_found_and_trained(tmp_path, monkeypatch):
    """Steps 1-2 of "add a task": the builder, registered by name, and its data YAML (the lm-eval YAML of
    step 3 is a benchmark's, tested with the suites in tests/test_eval_tasks.py)."""
    from mora.data import TASKS
    from mora.data.registry import register_task
    from mora.data.uuid import UUIDTask
    from mora.train import train

    monkeypatch.setattr(TASKS, "_classes", dict(TASKS._classes))

    @register_task("uuid_upper")
    @dataclass
    class UpperUUIDTask(UUIDTask):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.pairs = [(key, value.upper()) for key, value in self.pairs]

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "data" / "uuid_upper.yaml").write_text(UPPER_UUID_YAML)
    cfg = compose([*TINY_RUN, f"paths.runs_dir={tmp_path / 'runs'}", "data=uuid_upper", "method=lora"], conf)
    assert cfg.data.name == "uuid_upper"
    metrics = train(cfg)
    assert metrics["status"] == "completed" and metrics["summary"]["task"] == "uuid_upper"
    assert metrics["results_versions"]["data.uuid_upper"] == UpperUUIDTask.version
